"""Gradients of a function of a model's outputs with respect to its weights, on every backend.

Keras 3 has no `ops.grad`: each backend differentiates its own way, so this
module holds small functions per backend (TensorFlow's `GradientTape`,
`jax.grad`, torch's autograd), all around `model.stateless_call`. A stateless
call changes nothing: a training-mode call does not move the BatchNormalization
statistics, and the weights may be replaced by other values for one call
(SynFlow differentiates at |θ|).
"""

import contextlib

import keras
import numpy as np


@contextlib.contextmanager
def no_gradients():
    """Runs its block without recording for differentiation where a backend would (torch).

    TensorFlow and JAX record nothing outside a tape or a `grad`.
    """
    if keras.backend.backend() == "torch":
        import torch

        with torch.no_grad():
            yield
    else:
        yield


def gradients(model, objective, inputs, *, values=None, training=False):
    """The gradient of `objective(model(inputs))` with respect to every trainable weight.

    Args:
        model: A built Keras model.
        objective: A function from the model's outputs to a scalar tensor, written
            with `keras.ops`, e.g. `lambda outputs: keras.ops.sum(outputs)`.
        inputs: The model's inputs: an array, or a list or dict of arrays.
        values: Optional values to use in place of `model.trainable_variables`
            for this call, one array per variable in that order. Defaults to
            `None`: the variables' own values.
        training: Whether to call the model in training mode (batch statistics
            in BatchNormalization, dropout on). The model's variables are not
            changed either way. Defaults to `False`.

    Returns:
        A list of numpy arrays, one per entry of `model.trainable_variables`,
        shaped like it: zeros for a weight the objective does not depend on.

    Example:

    ```python
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    grads = gradients(model, lambda outputs: loss(y, outputs), x, training=True)
    ```
    """
    call, values = _stateless(model, objective, inputs, values, training)
    return _to_numpy(_backend()[0](call, values), model)


def hessian_vector_product(model, objective, inputs, vector, *, values=None, training=False):
    """H·v, with H the Hessian of `objective(model(inputs))` in the trainable weights.

    Computed as the gradient of (∇objective · v) with `v` held fixed, without
    forming H. Arguments and result as in `gradients`; `vector` holds one array
    per trainable variable.
    """
    call, values = _stateless(model, objective, inputs, values, training)
    vector = [keras.ops.convert_to_tensor(v, dtype=x.dtype) for v, x in zip(vector, values)]
    return _to_numpy(_backend()[1](call, values, vector), model)


def _stateless(model, objective, inputs, values, training):
    """`objective` as a function of the trainable values, and those values as tensors."""
    variables = model.trainable_variables
    if values is None:
        values = [v.value for v in variables]
    elif len(values) != len(variables):
        raise ValueError(
            f"Expected one value per trainable variable of the model ({len(variables)}). "
            f"Received: {len(values)} values"
        )
    values = [keras.ops.convert_to_tensor(v, dtype=var.dtype) for v, var in zip(values, variables)]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def call(trainable):
        outputs, _ = model.stateless_call(trainable, non_trainable, inputs, training=training)
        return objective(outputs)

    return call, values


def _to_numpy(grads, model):
    return [
        np.zeros(tuple(v.shape), dtype=v.dtype) if g is None else keras.ops.convert_to_numpy(g)
        for g, v in zip(grads, model.trainable_variables)
    ]


def _backend():
    backend = keras.backend.backend()
    if backend not in _BACKENDS:
        raise ValueError(
            f"tf_lottery computes gradients under TensorFlow, JAX and PyTorch; this Keras "
            f"runs on {backend!r}. Set KERAS_BACKEND to one of {sorted(_BACKENDS)}."
        )
    return _BACKENDS[backend]


def _dot(grads, vector):
    return sum(
        keras.ops.sum(keras.ops.multiply(g, v)) for g, v in zip(grads, vector) if g is not None
    )


def _tensorflow_grad(call, values):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(values)
        result = call(values)
    return tape.gradient(result, values)


def _tensorflow_hvp(call, values, vector):
    import tensorflow as tf

    with tf.GradientTape() as outer:
        outer.watch(values)
        dot = _dot(_tensorflow_grad(call, values), vector)
    return outer.gradient(dot, values)


def _jax_grad(call, values):
    import jax

    return jax.grad(call)(values)


def _jax_hvp(call, values, vector):
    import jax

    return jax.grad(lambda v: _dot(jax.grad(call)(v), vector))(values)


def _torch_grad(call, values):
    import torch

    values = [v.detach().clone().requires_grad_(True) for v in values]
    return _detached(torch.autograd.grad(call(values), values, allow_unused=True))


def _torch_hvp(call, values, vector):
    import torch

    values = [v.detach().clone().requires_grad_(True) for v in values]
    grads = torch.autograd.grad(call(values), values, allow_unused=True, create_graph=True)
    dot = _dot(grads, vector)
    if not getattr(dot, "requires_grad", False):  # the gradient does not depend on the weights
        return [None] * len(values)
    return _detached(torch.autograd.grad(dot, values, allow_unused=True))


def _detached(grads):
    return [None if g is None else g.detach() for g in grads]


_BACKENDS = {
    "tensorflow": (_tensorflow_grad, _tensorflow_hvp),
    "jax": (_jax_grad, _jax_hvp),
    "torch": (_torch_grad, _torch_hvp),
}
