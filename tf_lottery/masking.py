"""How a mask reaches its weight: the constraint of the update step, and the wrappers' records.

`MaskConstraint` multiplies a weight by its mask after every optimizer step, on
every backend (on JAX through the step's state, on PyTorch in place).
`MaskedWeight` and `SavedWeight` are what a wrapper keeps per weight: its mask
and threshold, its saved copies. Masks are uint8 (`MASK_DTYPE`); a threshold
variable holds `NO_THRESHOLD` where there is none.
"""

import math
from typing import NamedTuple

import keras
from keras import ops

from tf_lottery.keras_private import get_stateless_scope

# A mask is 0 or 1: one byte per weight instead of four. It is cast to the
# weight's dtype where it multiplies one.
MASK_DTYPE = "uint8"


# What a threshold variable holds where there is no threshold (before the first
# round, or from a criterion without one such as RandomPrune); users see NaN.
# NaN itself is not stored: multi-process JAX checks that a value put on the
# devices is the same in every process, and NaN != NaN fails that check.
NO_THRESHOLD = float("-inf")


def threshold_of(stored):
    """The threshold that a stored value stands for: NaN for `NO_THRESHOLD`."""
    value = float(stored)
    return math.nan if value == NO_THRESHOLD else value


def stored_threshold(threshold):
    """What a threshold variable stores for `threshold` (a float, NaN for none)."""
    return NO_THRESHOLD if math.isnan(threshold) else threshold


def read_threshold(variable):
    """The threshold a `MaskedWeight.threshold` variable holds, NaN where there is none."""
    return threshold_of(ops.convert_to_numpy(variable.value))


def write_threshold(variable, threshold):
    """Stores `threshold` (a float, NaN for none) in a `MaskedWeight.threshold` variable."""
    variable.assign(stored_threshold(threshold))


def assign_copy(variable, value):
    """`variable.assign(value)` with a copy of `value`.

    On JAX a variable holds its array by reference, and the compiled train step
    donates (frees) every state buffer it is given: two variables holding the same
    buffer, such as a weight and its saved θ0, make the step fail. A copy keeps
    each variable's buffer its own.
    """
    variable.assign(ops.copy(value))


class MaskedWeight(NamedTuple):
    """A pruned weight of a wrapped layer and the variables kept beside it.

    Read `threshold` with `read_threshold`: it holds -inf where there is none.
    """

    name: str
    variable: keras.Variable
    mask: keras.Variable
    threshold: keras.Variable


class SavedWeight(NamedTuple):
    """A weight of a wrapped layer and its saved copies.

    With `keep="both"` (and in files of layout 1 and 2) `initial` holds θ0 and
    `rewind_point` the rewind point. With `keep="rewind"` they are one variable:
    θ0 until `save_rewind_point` replaces it.
    """

    name: str
    variable: keras.Variable
    initial: keras.Variable
    rewind_point: keras.Variable
    mask: keras.Variable | None


class MaskConstraint(keras.constraints.Constraint):
    """Multiplies a weight by its mask after every optimizer step.

    Keras optimizers apply `variable.constraint` right after each update, inside
    the compiled train step, on every backend. Masking there, rather than in the
    forward pass, costs one multiply per step and keeps the weight variable itself
    sparse, so every checkpoint is sparse too. A constraint the layer already had
    runs first.

    How the mask reaches the step: on TensorFlow and PyTorch variables are
    stateful, and the constraint reads the mask variable itself. On JAX the train
    step is a pure function of the model's state, and the optimizer's update sees
    only the trainable and optimizer variables, not the mask (a non-trainable
    variable). So the wrapper's forward pass, which runs in the same compiled step
    with the whole state, hands the step's mask value to this constraint
    (`step_mask`), and the update uses it. A changed mask thus reaches the next
    step as state, with no retrace.

    Args:
        mask: The 0/1 mask variable.
        constraint: The weight's previous constraint, or `None`.
    """

    def __init__(self, mask, constraint=None):
        self.mask = mask
        self.constraint = constraint
        self.step_mask = None

    def remember_step_mask(self):
        """Keeps the mask value of a stateless step for the update that follows.

        Called by the wrapper's forward pass. Only a stateless step that carries
        the mask in its state (JAX's train step) leaves a value here.
        """
        scope = get_stateless_scope()
        if scope is not None and scope.get_current_value(self.mask) is not None:
            self.step_mask = self.mask.value

    def __call__(self, weight):
        if self.constraint is not None:
            weight = self.constraint(weight)
        scope = get_stateless_scope()
        if scope is None and IN_PLACE and isinstance(weight, keras.Variable):
            # PyTorch runs every step eagerly: multiplying the variable's tensor in
            # place saves a new tensor and the copy into the variable that
            # `variable.assign` would make (torch's copy_ of a tensor onto itself
            # is a no-op).
            return multiply_in_place(weight.value, self.mask.value)
        if (
            scope is not None
            and scope.get_current_value(self.mask) is None
            and self.step_mask is not None
        ):
            mask = self.step_mask
        else:
            mask = self.mask.value
        return ops.multiply(weight, ops.cast(mask, weight.dtype))

    def get_config(self):
        # Masks are variables of the wrapper and are saved with it; the wrapper
        # installs this constraint again when it is built.
        return {}


# Eager backends whose tensors can be multiplied in place (see MaskConstraint).
IN_PLACE = keras.backend.backend() == "torch"


def multiply_in_place(value, mask):
    import torch

    with torch.no_grad():
        return value.mul_(mask)


def remember_step_masks(constraints):
    """Hands the step's masks to `constraints` in a stateless (JAX) step; else nothing.

    One scope lookup per layer call, not one per weight: eager steps pay almost
    nothing for it.
    """
    if get_stateless_scope() is not None:
        for constraint in constraints:
            constraint.remember_step_mask()


class CopyOf(keras.initializers.Initializer):
    """Initializes a variable with a copy of another variable's value.

    θ0 is initialized this way rather than copied after `build`: a subclassed
    model builds its layers inside a symbolic call, where Keras defers every
    variable's initialization to the end of the call (in creation order, so the
    weight gets its value before its copy does) and an `assign` would be lost.
    """

    def __init__(self, variable):
        self.variable = variable

    def __call__(self, shape, dtype=None):
        return ops.copy(ops.cast(self.variable.value, dtype or self.variable.dtype))
