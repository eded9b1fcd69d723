"""Freezing: some layers' weights held exactly fixed while the rest train and prune.

A frozen weight gets a constraint that returns its value at the start of the fit,
so the optimizer's update is undone inside the train step itself. The freeze
belongs to one call of `fit` and leaves nothing behind when that fit ends, even
when it ends in an exception (Keras then skips `on_train_end`):

- the constraint is inert outside its fit: it recognises the fit by the
  `History` object Keras gives every `fit` (as `model.history`) before any
  callback runs, and in another fit passes the weight to its own constraint;
- the train step traced with the freeze releases it when a later fit calls it:
  the weights get their own constraints back and the step is traced again;
- every pruning callback releases what is left at the start of its fit too.
"""

import fnmatch

import keras

from tf_lottery import keras_private
from tf_lottery.wrapper import RewindWrapper
from tf_lottery.wrapper import find_rewind_wrappers


def _name(layer):
    """A layer's name as users know it: the wrapped layer's for a wrapper."""
    return layer.target_name if isinstance(layer, RewindWrapper) else layer.name


def check_patterns(frozen):
    """`frozen` as a tuple of layer names or shell-style patterns; a ValueError otherwise."""
    patterns = (frozen,) if isinstance(frozen, str) else frozen
    if not isinstance(patterns, (list, tuple)) or not all(
        isinstance(p, str) and p for p in patterns
    ):
        raise ValueError(
            "Expected frozen to be a list of layer names or patterns such as 'conv*'. "
            f"Received: frozen={frozen!r}"
        )
    return tuple(patterns)


def match_layers(model, patterns):
    """The layers of `model` whose names match `patterns`, each once.

    A wrapper stands for the layer it wraps. Raises a ValueError for a pattern
    that matches no layer.
    """
    inner = {id(w.layer) for w in find_rewind_wrappers(model)}
    candidates = [c for c in keras_private.flatten_layers(model) if id(c) not in inner]
    matched = []
    for pattern in patterns:
        found = [c for c in candidates if fnmatch.fnmatchcase(_name(c), pattern)]
        if not found:
            raise ValueError(
                f"frozen pattern {pattern!r} matches no layer of model '{model.name}'. "
                f"Layers: {[_name(c) for c in candidates]}. Received: frozen={list(patterns)}"
            )
        matched.extend(f for f in found if f not in matched)
    return matched


class _Fit:
    """One call of `model.fit`, recognised by the History object Keras gives it."""

    def __init__(self, model):
        self.model = model
        self.history = getattr(model, "history", None)

    def is_running(self):
        return getattr(self.model, "history", None) is self.history


class _Frozen(keras.constraints.Constraint):
    """Puts a weight back to `value` after every step of one fit."""

    def __init__(self, value, original, fit):
        self.value = value
        self.original = original
        self.fit = fit

    def __call__(self, weight):
        # Evaluated when the train step is traced (TensorFlow, JAX), or at every
        # step (PyTorch).
        if self.fit.is_running():
            return self.value
        return weight if self.original is None else self.original(weight)


class _FrozenTrainStep:
    """`model.train_function` while layers are frozen: releases them in another fit."""

    def __init__(self, function, model, fit):
        self.function = function
        self.model = model
        self.fit = fit

    def __call__(self, *args, **kwargs):
        if self.fit.is_running():
            return self.function(*args, **kwargs)
        # Let go of the frozen step first: JAX reuses the trace of a jitted
        # method while the function it was traced for is alive.
        self.function = None
        release(self.model)
        return self.model.train_function(*args, **kwargs)


def freeze(model, layers):
    """Holds the trainable weights of `layers` at their current values for this fit.

    Call it from a callback's `on_train_begin`. Whatever an earlier fit left
    frozen is released first.
    """
    release(model)
    fit = _Fit(model)
    frozen = False
    for layer in layers:
        inner = layer.layer if isinstance(layer, RewindWrapper) else layer
        for variable in inner.trainable_weights:
            # A numpy copy: a tensor made from the variable would follow its updates.
            value = keras.ops.convert_to_numpy(variable.value).copy()
            variable.constraint = _Frozen(value, variable.constraint, fit)
            frozen = True
    if frozen:
        # The train step reads constraints when it is traced: trace it again.
        model.make_train_function(force=True)
        model.train_function = _FrozenTrainStep(model.train_function, model, fit)


def release(model):
    """Gives every frozen weight of `model` its own constraint back.

    Traces the train step again if anything was frozen; does nothing otherwise.
    """
    released = False
    for variable in model.weights:
        if isinstance(variable.constraint, _Frozen):
            variable.constraint = variable.constraint.original
            released = True
    if released:
        model.make_train_function(force=True)
