"""gradients.py on each backend: gradients and Hessian-vector products against hand computations."""

import keras
import numpy as np
import pytest

import tf_lottery as tl
from tf_lottery.gradients import gradients
from tf_lottery.gradients import hessian_vector_product

N, D, K = 6, 4, 2


def linear():
    """A linear model y = xW + b and data, for mean squared error."""
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(K, name="fc")])
    rng = np.random.default_rng(1)
    x = rng.normal(size=(N, D)).astype("float32")
    y = rng.normal(size=(N, K)).astype("float32")
    return model, x, y


def mse(y):
    return lambda outputs: keras.ops.mean(keras.ops.square(keras.ops.subtract(outputs, y)))


def weights(model):
    return [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]


def test_gradient_of_mean_squared_error_equals_the_hand_computation():
    model, x, y = linear()
    w, b = weights(model)
    grad_w, grad_b = gradients(model, mse(y), x)
    residual = x @ w + b - y
    np.testing.assert_allclose(grad_w, 2 / (N * K) * x.T @ residual, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad_b, 2 / (N * K) * residual.sum(0), rtol=1e-5, atol=1e-6)


def test_values_replace_the_weights_for_one_call():
    model, x, y = linear()
    w, b = weights(model)
    other = [np.abs(w), b + 1]
    grad_w, _ = gradients(model, mse(y), x, values=other)
    residual = x @ other[0] + other[1] - y
    np.testing.assert_allclose(grad_w, 2 / (N * K) * x.T @ residual, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(weights(model)[0], w)
    with pytest.raises(ValueError, match="one value per trainable variable"):
        gradients(model, mse(y), x, values=[w])


def test_hessian_vector_product_equals_the_hand_computation():
    model, x, y = linear()
    rng = np.random.default_rng(2)
    v_w, v_b = rng.normal(size=(D, K)).astype("float32"), rng.normal(size=K).astype("float32")
    hv_w, hv_b = hessian_vector_product(model, mse(y), x, [v_w, v_b])
    # The gradient is linear in (W, b); its change along (V, u) is that of the residual.
    d_residual = x @ v_w + v_b
    np.testing.assert_allclose(hv_w, 2 / (N * K) * x.T @ d_residual, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(hv_b, 2 / (N * K) * d_residual.sum(0), rtol=1e-4, atol=1e-5)


def test_a_training_mode_call_changes_nothing_in_the_model():
    model = keras.Sequential(
        [
            keras.Input((D,)),
            keras.layers.Dense(3, name="fc"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(K, name="out"),
        ]
    )
    model = tl.wrap(model)
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(N, D)).astype("float32")
    before = [keras.ops.convert_to_numpy(v) for v in model.weights]
    grads = gradients(model, lambda outputs: keras.ops.sum(outputs**2), x, training=True)
    assert [g.shape for g in grads] == [tuple(v.shape) for v in model.trainable_variables]
    assert np.abs(grads[0]).sum() > 0
    for a, b in zip(before, model.weights):
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(b))
