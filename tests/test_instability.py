"""Instability analysis: the linear path between two networks and its error barrier."""

import contextlib
import json
import os

import keras
import numpy as np
import pytest
from conftest import BACKEND
from conftest import compile_model
from conftest import data
from conftest import mlp

import tf_lottery as tl
from tf_lottery.experiments import instability as instability_module

FIT = {"batch_size": 32}


def trained(seed=0, **kwargs):
    model = compile_model(tl.wrap(mlp()))
    x, y = data(128)
    keras.utils.set_random_seed(seed)
    model.fit(x, y, epochs=2, verbose=0, **FIT, **kwargs)
    return model


def bn_model():
    model = keras.Sequential(
        [
            keras.Input((20,)),
            keras.layers.Dense(16, name="fc1"),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Dense(3, name="out"),
        ]
    )
    return compile_model(tl.wrap(model))


@contextlib.contextmanager
def deterministic_ops():
    """TensorFlow's op determinism for the block; the other backends are deterministic on CPU."""
    if BACKEND != "tensorflow":
        yield
        return
    import tensorflow as tf
    from tensorflow.python.framework import config  # the public API can only enable it

    was = config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if not was:
            config.disable_op_determinism()


def test_a_network_interpolated_with_itself_has_no_barrier():
    model = trained()
    x, y = data(64, seed=1)
    result = tl.interpolate(model, model, (x, y), points=5)
    assert result.alphas == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert result.error_barrier == 0.0 and result.loss_barrier == 0.0
    assert len(set(result.loss)) == 1 and len(set(result.accuracy)) == 1
    assert result.loss[0] == pytest.approx(
        model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    )


def test_with_batch_norm_the_statistics_are_recomputed_at_each_point():
    model = bn_model()
    x, y = data(128)
    model.fit(x, y, epochs=1, verbose=0, **FIT)
    result = tl.interpolate(model, model, (x[:64], y[:64]), points=3, train_data=(x, y))
    assert result.error_barrier == 0.0 and result.loss_barrier == pytest.approx(0.0, abs=1e-6)
    # The recomputed statistics are the averages of the batch statistics of one pass.
    layer = next(
        w.layer
        for w in tl.find_rewind_wrappers(model)
        if isinstance(w.layer, keras.layers.BatchNormalization)
    )
    work = instability_module._clone(model)
    instability_module.recompute_batch_norm(work, (x, y), batch_size=32)
    bn = next(
        w.layer
        for w in tl.find_rewind_wrappers(work)
        if isinstance(w.layer, keras.layers.BatchNormalization)
    )
    kernel = keras.ops.convert_to_numpy(model.layers[0].layer.kernel)
    bias = keras.ops.convert_to_numpy(model.layers[0].layer.bias)
    hidden = [x[i : i + 32] @ kernel + bias for i in range(0, 128, 32)]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(bn.moving_mean),
        np.mean([h.mean(0) for h in hidden], axis=0),
        rtol=1e-4,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(bn.moving_variance),
        np.mean([h.var(0) for h in hidden], axis=0),
        rtol=1e-3,
        atol=1e-5,
    )
    assert layer.momentum == bn.momentum == 0.99  # put back
    with pytest.raises(ValueError, match="BatchNormalization.*train_data"):
        tl.interpolate(model, model, (x, y), points=3)


def test_two_copies_with_the_same_data_order_give_no_barrier():
    model = compile_model(tl.wrap(mlp()))
    tl.prune(model, tl.PruneFraction(0.5))
    x, y = data(128)
    with deterministic_ops():
        result = tl.instability_analysis(
            model, (x, y), (x[:64], y[:64]), epochs=2, seeds=(3, 3), points=3, fit_kwargs=FIT
        )
    assert result.error_barrier == 0.0 and result.loss_barrier == 0.0


def test_masked_weights_stay_zero_along_the_path(monkeypatch):
    a, b = trained(0), trained(1)
    tl.prune(a, tl.PruneFraction(0.7))
    for wa, wb in zip(tl.find_wrappers(a), tl.find_wrappers(b)):
        for ma, mb in zip(wa.masked_weights, wb.masked_weights):
            mb.mask.assign(ma.mask.value)
    tl.apply_masks(b)
    masks = [keras.ops.convert_to_numpy(m) for w in tl.find_wrappers(a) for m in w.masks.values()]
    seen = []
    real = instability_module._metrics

    def record(work, evaluation_data):
        kernels = [keras.ops.convert_to_numpy(w.layer.kernel) for w in tl.find_wrappers(work)]
        seen.append(all(np.all(k[m == 0] == 0) for k, m in zip(kernels, masks)))
        return real(work, evaluation_data)

    monkeypatch.setattr(instability_module, "_metrics", record)
    x, y = data(64, seed=1)
    result = tl.interpolate(a, b, (x, y), points=4)
    assert seen == [True] * 4
    assert result.error_barrier >= 0.0 and result.alphas[1] == pytest.approx(1 / 3)


def test_interpolation_bad_input(tmp_path):
    a, b = trained(0), trained(1)
    x, y = data(32)
    for points in (2, 0, 3.0, True):
        with pytest.raises(ValueError, match=f"points to be an integer >= 3.*points={points!r}"):
            tl.interpolate(a, b, (x, y), points=points)
    tl.prune(b, tl.PruneFraction(0.5))
    with pytest.raises(ValueError, match="different masks"):
        tl.interpolate(a, b, (x, y))
    with pytest.raises(ValueError, match="different weights"):
        tl.interpolate(a, compile_model(tl.wrap(mlp(hidden=8))), (x, y))
    with pytest.raises(ValueError, match="two non-negative integers"):
        tl.instability_analysis(a, (x, y), (x, y), epochs=1, seeds=(1,))
    with pytest.raises(ValueError, match="epochs"):
        tl.instability_analysis(a, (x, y), (x, y), epochs=0)


def test_plot_interpolation_is_a_png(tmp_path):
    model = trained()
    x, y = data(32)
    result = tl.interpolate(model, model, (x, y), points=3)
    path = str(tmp_path / "path.png")
    tl.plot_interpolation({"ticket": result, "random": result}, path)
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert json.loads(json.dumps(result.to_dict()))["error_barrier"] == 0.0
    assert os.path.getsize(path) > 1000
