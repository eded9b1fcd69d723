"""`shrink`: a smaller dense model without the units that pruning left dead.

A unit (a Dense neuron, a convolution filter) can go when nothing downstream
depends on it: either every layer that reads it has all of its input weights for
it pruned, or it outputs a constant that can be folded exactly into the biases of
the layers that read it. `shrink` finds such units with `channel_groups`, builds
a plain Keras model with fewer units, and checks that it predicts what the
original predicts.
"""

import dataclasses
import math
import warnings

import keras
import numpy as np

from tf_lottery import keras_private
from tf_lottery.export.samples import random_inputs
from tf_lottery.registry import unit_count_key
from tf_lottery.structured.channels import channel_groups
from tf_lottery.structured.channels import per_kind_warning
from tf_lottery.structured.channels import unknown_kinds
from tf_lottery.structured.heads import head_count
from tf_lottery.structured.heads import head_groups
from tf_lottery.structured.hub_units import feed_forward_blocks
from tf_lottery.structured.rebuild import Plan
from tf_lottery.structured.rebuild import rebuild
from tf_lottery.structured.removable import channel_constants
from tf_lottery.structured.removable import dead_columns
from tf_lottery.structured.removable import limited
from tf_lottery.structured.removable import removable_channels
from tf_lottery.structured.removable import removable_heads
from tf_lottery.transforms import strip
from tf_lottery.validators import check_choice
from tf_lottery.validators import check_int
from tf_lottery.wrapper import find_rewind_wrappers

L = keras.layers

# Predictions of the shrunk model may differ from the original's by this much,
# relative to max(1, largest |output|): float error of the folded biases only.
_TOLERANCE = 1e-4


class NothingToShrink(ValueError):
    """`shrink` found no unit it can remove; the model is fine as it is."""


class ShrinkWarning(UserWarning):
    """`shrink` kept units that a layer it does not understand reads.

    Its own category, so that a caller (`export_tflite`) can pass these lines on
    to the user without matching their text.
    """


@dataclasses.dataclass(frozen=True)
class LayerShrink:
    """One layer's size before and after `shrink`."""

    layer: str
    units_before: int
    units_after: int
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int


@dataclasses.dataclass(frozen=True)
class ShrinkReport:
    """Per-layer units, parameters and multiply-accumulates before and after `shrink`."""

    layers: tuple

    @property
    def params_before(self):
        return sum(r.params_before for r in self.layers)

    @property
    def params_after(self):
        return sum(r.params_after for r in self.layers)

    @property
    def macs_before(self):
        return sum(r.macs_before for r in self.layers)

    @property
    def macs_after(self):
        return sum(r.macs_after for r in self.layers)

    def __getitem__(self, name):
        for row in self.layers:
            if row.layer == name:
                return row
        raise KeyError(f"No layer named {name!r}; layers: {[r.layer for r in self.layers]}")

    def __str__(self):
        # As wide as the longest name: in a KerasHub model layers are known by path.
        width = max([24] + [len(r.layer) for r in self.layers])
        header = f"{'layer':<{width}} {'units':>13} {'params':>21} {'MACs':>25}"
        lines = [header, "-" * len(header)]
        for r in self.layers:
            # A row that sums several layers (a KerasHub model's unchanged ones) has no units.
            units = f"{r.units_before:>5} → {r.units_after:<5}" if r.units_before else " " * 13
            lines.append(
                f"{r.layer:<{width}} {units} "
                f"{r.params_before:>9,} → {r.params_after:<9,} "
                f"{r.macs_before:>11,} → {r.macs_after:<11,}"
            )
        lines.append("-" * len(header))
        lines.append(
            f"{'total':<{width}} {'':>13} {self.params_before:>9,} → {self.params_after:<9,} "
            f"{self.macs_before:>11,} → {self.macs_after:<11,}"
        )
        return "\n".join(lines)


def _units(layer):
    key = unit_count_key(layer)
    return getattr(layer, key) if key else head_count(layer)


def _macs(layer):
    """Multiply-accumulates of one call of `layer` on one example."""
    try:
        shape = tuple(layer.output.shape)
    except (AttributeError, ValueError):  # a shared layer has several outputs
        return 0
    positions = math.prod(d for d in shape[1:-1]) if len(shape) > 2 else 1
    kernel = getattr(layer, "kernel", None)
    if kernel is None and head_count(layer) is not None:
        # The projections, one position each: self-attention's query, key and value
        # positions are the output's. The attention products are left out.
        kernels = [sub.kernel for sub in keras_private.flatten_layers(layer) if _has_kernel(sub)]
        return sum(int(math.prod(k.shape)) for k in kernels) * positions
    if kernel is None:
        return 0
    return int(math.prod(kernel.shape)) * positions


def _has_kernel(layer):
    return getattr(layer, "kernel", None) is not None


def _graph_layers(model):
    """The layers of `model`'s graph, nested models' included, not their sublayers:
    a MultiHeadAttention is one row, its projections counted in it."""
    for layer in model.layers:
        if keras_private.is_graph_model(layer):
            yield from _graph_layers(layer)
        else:
            yield layer


def shrink_report(before, after):
    """Compares two models layer by layer: units, parameters and MACs.

    Args:
        before: A Sequential or Functional model.
        after: The same architecture with fewer units, e.g. `shrink(before)`.

    Returns:
        A `ShrinkReport` with one row per layer with weights; `print()` it. For
        a KerasHub model, one row per layer whose size changed and one for
        every other layer, multiply-accumulates counted per token.
    """
    if feed_forward_blocks(before):
        return _hub_shrink().report(
            strip(before) if find_rewind_wrappers(before) else before, after
        )
    before = strip(before) if find_rewind_wrappers(before) else before
    rows = []
    for old, new in zip(_graph_layers(before), _graph_layers(after)):
        if not old.weights:
            continue
        params = (
            sum(int(math.prod(w.shape)) for w in old.weights),
            sum(int(math.prod(w.shape)) for w in new.weights),
        )
        units = (_units(old), _units(new))
        if units[0] is None:
            units = (old.output.shape[-1], new.output.shape[-1])
        rows.append(LayerShrink(old.name, *units, *params, _macs(old), _macs(new)))
    return ShrinkReport(tuple(rows))


def _hub_shrink():
    # Imported on use: tf_lottery.structured.hub_shrink builds on this module.
    from tf_lottery.structured import hub_shrink

    return hub_shrink


class _AllZero:
    """Every channel's constant is zero, as for the units a unit criterion prunes."""

    def __getitem__(self, key):
        return 0.0 if isinstance(key, (int, np.integer)) else self


class ShrinkPlanner:
    """The `ShrinkReport` of the model `shrink` would build, without building it.

    For a search over how many units to prune (`tf_lottery.Target`): given the
    channels of each group that go, the sizes come from shrink's own plan
    (kernels sliced as `shrink` slices them; MACs of a layer scale with its
    kernel, per position as `shrink_report` counts them). The channels are
    taken to be exactly zero, as unit criteria leave them, so no bias is folded.

    Args:
        model: A Sequential or Functional model, wrapped or plain.

    Attributes:
        groups: The prunable `ChannelGroup`s of the plain model.
        dense: The `ShrinkReport` with nothing removed.
    """

    def __init__(self, model):
        plain = strip(model) if find_rewind_wrappers(model) else model
        self.groups = [g for g in channel_groups(plain) if g.prunable]
        layers = keras_private.flatten_layers(plain)
        self._values = {id(layer): _weights(layer) for layer in layers}
        # The rows of shrink_report, in its order.
        self._layers = [x for x in _graph_layers(plain) if x.weights]
        self.dense = shrink_report(plain, plain)

    def report(self, removed):
        """The `ShrinkReport` with the channels `removed[group.name]` of each group gone."""
        plan = Plan(self._values)
        for group in self.groups:
            channels = sorted(int(c) for c in removed.get(group.name, ()))
            plan.add(group, limited(channels, group), _AllZero())
        rows = []
        for layer, row in zip(self._layers, self.dense.layers):
            if not plan.changes(layer):
                rows.append(row)
                continue
            names = [w.name for w in layer.weights]
            weights = plan.weights_for(layer)
            macs = row.macs_before
            if "kernel" in names and self._values[id(layer)]["kernel"].size:
                kernel = weights[names.index("kernel")]
                macs = macs * kernel.size // self._values[id(layer)]["kernel"].size
            units = plan.new_units(layer) or plan.new_channels(layer) or row.units_before
            params = sum(int(w.size) for w in weights)
            rows.append(
                dataclasses.replace(row, units_after=units, params_after=params, macs_after=macs)
            )
        return ShrinkReport(tuple(rows))


def shrink(model, *, align=1, verbose=0):
    """Returns a plain Keras model without the units that pruning left dead.

    Removes every output unit (Dense neuron, convolution filter, with its
    BatchNormalization and depthwise channels) whose removal does not change the
    model's predictions:

    - all of its outgoing weights are pruned (no layer reads it), or
    - all of its incoming weights are pruned, so it outputs a constant (its bias,
      through BatchNormalization and activation). The constant is folded into the
      bias of each layer that reads it, where that is exact: a Dense layer, or a
      convolution with `padding="valid"` or a 1x1 kernel (a reader without a
      bias gets one). Across squeeze-excite, where an input-dependent gate
      multiplies it, only a constant of zero goes. A `"same"`-padded
      convolution meets the constant with zero padding at the borders, so there
      the unit stays unless the constant is exactly zero. Unit criteria
      (`tf_lottery.UnitNorm`, ...) make it zero: they mask the unit's bias and
      the γ and β of the BatchNormalization that follows.

    Channels joined by a residual `Add` (or another elementwise merge, operator
    nodes such as `x * y` included) go together; `Concatenate`, `Flatten`,
    pooling, padding, activations, squeeze-excite, LayerScale, grouped and
    depthwise convolutions are followed (see `tf_lottery.structured.channels`). A group of
    channels that reaches a layer the analysis does not know (a `Lambda`, a
    custom layer, a subclassed model inside) or the model's output is left as it
    is, with one warning per kind of layer. Weights are copied by position. The
    result is checked on random inputs against `model`; it is never a model that
    predicts differently.

    A KerasHub Backbone or Task (`CausalLM`, `TextClassifier`) is rebuilt
    from its config with fewer feed-forward units in its transformer blocks,
    as many in every block (see `tf_lottery.structured.hub_shrink.shrink_blocks`); its
    class, `generate()` and preprocessor stay.

    Args:
        model: A Sequential or Functional model, wrapped (it is stripped first)
            or plain, or a KerasHub Backbone or Task.
        align: Remove the input rows of a Dense layer that stays sparse only in
            whole aligned blocks of this many, so that TFLite's block-sparse
            kernels (blocks of 4 for float, 16 for int8) keep their blocks.
            `export_tflite` sets it. Defaults to `1`.
        verbose: `1` prints the per-layer table of units, parameters and MACs
            before and after. Defaults to `0`.

    Returns:
        A new, uncompiled Keras model. `shrink_report(model, result)` gives the
        table.

    Example:

    ```python
    tf_lottery.prune(model, tf_lottery.UnitNorm(0.5))
    small = tf_lottery.shrink(model, verbose=1)
    ```
    """
    if not keras_private.is_graph_model(model):
        raise ValueError(
            "shrink() rebuilds the graph of a Sequential or Functional model. Received: "
            f"model of type {type(model).__name__}."
        )
    align = check_int(align, "align", minimum=1, meaning="TFLite's sparse block size, 4 or 16")
    check_choice(verbose, "verbose", (0, 1))
    if feed_forward_blocks(model):
        return _hub_shrink().shrink_blocks(model, verbose=verbose)
    plain = strip(model) if find_rewind_wrappers(model) else model
    groups = channel_groups(plain)
    _warn_blocked(groups)
    values = {id(layer): _weights(layer) for layer in keras_private.flatten_layers(plain)}
    constants = channel_constants(plain, values)
    plan = Plan(values)
    for group in groups:
        if group.prunable:
            plan.add(group, removable_channels(group, values, constants, align), constants)
    for group in head_groups(plain):
        plan.add_heads(group, removable_heads(group))
    if not plan.changed:
        raise NothingToShrink(
            f"Model '{model.name}' has no unit that shrink() can remove: "
            + _what_was_found(plain, values)
        )
    small = rebuild(plain, plan)
    _check_same_predictions(plain, small)
    if verbose:
        print(shrink_report(plain, small))
    return small


def _what_was_found(model, values):
    """Why nothing can be removed, from the units and weights the model has."""
    dead = units = pruned = size = 0
    for layer in keras_private.flatten_layers(model):
        if unit_count_key(layer) and id(layer) in values:
            kernel = values[id(layer)]["kernel"]
            dead += int(dead_columns(kernel).sum())
            units += kernel.shape[-1]
            pruned += int((kernel == 0).sum())
            size += kernel.size
    if dead:
        return (
            f"{dead} of the {units} units of its Dense and convolution layers "
            f"{'has' if dead == 1 else 'have'} every incoming weight pruned, but each of "
            "them reaches the model's output or a layer "
            "that keeps its units (see the warnings above, if any). Prune units of the "
            "hidden layers, or prune further."
        )
    return (
        f"{pruned / max(size, 1):.1%} of the kernel weights of its Dense and convolution "
        f"layers are pruned, but none of their {units} units has all of its incoming or "
        "outgoing weights pruned. Prune whole units first, e.g. "
        "tf_lottery.prune(model, tf_lottery.UnitNorm(0.5)), or prune further."
    )


def _warn_blocked(groups):
    for entries in unknown_kinds(groups).values():
        line = per_kind_warning(entries, lambda group: "some units")
        warnings.warn(
            f"shrink() leaves {line}. Units that reach it are kept.",
            ShrinkWarning,
            stacklevel=3,
        )


def _weights(layer):
    """`layer`'s weights by name, for the layers whose units the plan changes.

    Names are only read where they are known and unique (a Dense layer's `kernel`
    and `bias`); weights are copied to the smaller model by position, since
    sublayers repeat names (MultiHeadAttention) and `add_weight` without a name
    numbers them per process (`variable_3`).
    """
    return {w.name: keras.ops.convert_to_numpy(w.value) for w in layer.weights}


def _check_same_predictions(before, after, x=None):
    """Raises a RuntimeError if `after` predicts otherwise than `before` on `x`
    (by default, random inputs)."""
    if x is None:
        x = random_inputs(before, 8)
        x = x if len(x) > 1 else x[0]
    expected = keras.tree.flatten(before(x, training=False))
    got = keras.tree.flatten(after(x, training=False))
    for a, b in zip(expected, got):
        a, b = keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        scale = max(1.0, float(np.max(np.abs(a))))
        error = float(np.max(np.abs(a - b))) / scale
        if not error <= _TOLERANCE:
            raise RuntimeError(
                f"shrink() built a model whose predictions differ from the original's by "
                f"{error:.3g} (relative); it is not returned. Please report this with the "
                "model's summary()."
            )
