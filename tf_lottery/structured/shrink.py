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
from tf_lottery.registry import channel_role
from tf_lottery.registry import constant_channels
from tf_lottery.registry import merge_constants
from tf_lottery.registry import per_channel_axes
from tf_lottery.registry import resized_config
from tf_lottery.registry import unit_count_key
from tf_lottery.structured.channels import BINARY_OPERATIONS
from tf_lottery.structured.channels import UNARY_OPERATIONS
from tf_lottery.structured.channels import channel_groups
from tf_lottery.structured.channels import per_kind_warning
from tf_lottery.structured.channels import unknown_kinds
from tf_lottery.structured.channels import walk_graph
from tf_lottery.structured.heads import head_count
from tf_lottery.structured.heads import head_groups
from tf_lottery.structured.heads import silent_units
from tf_lottery.transforms import fresh_copy
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
    hub_units = _hub_units()
    if hub_units.feed_forward_blocks(before):
        return hub_units.report(strip(before) if find_rewind_wrappers(before) else before, after)
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


def _hub_units():
    # Imported on use: tf_lottery.structured.hub_units builds on this module.
    from tf_lottery.structured import hub_units

    return hub_units


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
        plan = _Plan(self._values)
        for group in self.groups:
            channels = sorted(int(c) for c in removed.get(group.name, ()))
            plan.add(group, _limited(channels, group), _AllZero())
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
    as many in every block (see `tf_lottery.structured.hub_units.shrink_blocks`); its
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
    if _hub_units().feed_forward_blocks(model):
        return _hub_units().shrink_blocks(model, verbose=verbose)
    plain = strip(model) if find_rewind_wrappers(model) else model
    groups = channel_groups(plain)
    _warn_blocked(groups)
    values = {id(layer): _weights(layer) for layer in keras_private.flatten_layers(plain)}
    constants = _constants(plain, values)
    plan = _Plan(values)
    for group in groups:
        if group.prunable:
            plan.add(group, _removable(group, values, constants, align), constants)
    for group in head_groups(plain):
        plan.add_heads(group, _removable_heads(group))
    if not plan.changed:
        raise NothingToShrink(
            f"Model '{model.name}' has no unit that shrink() can remove: "
            + _what_was_found(plain, values)
        )
    small = _rebuild(plain, plan)
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
            dead += int(_dead_columns(kernel).sum())
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


def _activation(layer, x):
    function = getattr(layer, "activation", None)
    if function is None:
        return x
    return np.asarray(keras.ops.convert_to_numpy(function(keras.ops.convert_to_tensor(x))))


def _constants(model, values):
    """Per tensor, the value of each channel where it is constant, else NaN.

    Evaluated in inference mode: BatchNormalization with its moving statistics,
    Dropout as the identity.
    """

    def visit(layer, inputs, ins, outputs):
        width = outputs[0].shape[-1] if outputs and outputs[0].shape else None
        out = _constant_of(layer, inputs, ins, outputs, values.get(id(layer), {}))
        if isinstance(layer, L.Flatten) and out is not None:
            width = len(out)  # kept per channel of the input, as channel groups count
        if out is None or width is None or len(out) != width:
            out = np.full(width or 0, np.nan)
        return [out] * len(outputs)

    constants = {}
    walk_graph(model, constants, visit)
    return constants


def _dead_columns(kernel):
    return ~np.any(kernel.reshape(-1, kernel.shape[-1]) != 0, axis=0)


def _constant_of(layer, inputs, ins, outputs, weights):
    """The constant channels of one call's output, from its inputs' (NaN: not constant).

    Producers output their bias (after the activation) for units whose incoming
    weights are all pruned; a depthwise follower its bias where its kernel or
    input is zero; any other layer what its table entry's `constant` says, or by
    default its role's (`registry.constant_channels`).
    """
    if not ins or any(c is None for c in ins):
        return None
    x = ins[0]
    if not isinstance(layer, L.Layer):
        return _operation_constant(layer, inputs, ins, outputs)
    role = channel_role(layer, inputs, outputs)
    rank = len(inputs[0].shape)
    if role == "produce":
        kernel = weights["kernel"]
        bias = weights.get("bias", np.zeros(kernel.shape[-1], kernel.dtype))
        return np.where(_dead_columns(kernel), _activation(layer, bias), np.nan)
    axes = per_channel_axes(layer, rank) if role == "follow" else None
    if axes is not None and "kernel" in axes:  # a depthwise convolution
        kernel = np.moveaxis(weights["kernel"], axes["kernel"], -1)
        channels = kernel.shape[-1]
        kernel = kernel.reshape(-1, channels)
        bias = weights.get("bias", np.zeros(channels, kernel.dtype))
        dead = ~np.any(kernel != 0, axis=0) | (x == 0)
        value = np.where(dead, bias, np.nan)
        if layer.padding == "valid":
            value = np.where(np.isnan(value), x * kernel.sum(axis=0) + bias, value)
        return _activation(layer, value)
    if role not in ("follow", "pass", "flatten", "merge", "concatenate"):
        return None
    return constant_channels(layer, role, ins, weights, rank)


def _operation_constant(operation, inputs, ins, outputs):
    """The constant of an operator node (`x + 3`, `x * y`) on constant channels."""
    kind = type(operation).__name__
    if kind not in UNARY_OPERATIONS | BINARY_OPERATIONS or len({c.shape for c in ins}) != 1:
        return None
    if len(ins) > 1 and kind == "Multiply":
        return merge_constants(operation, ins)
    values = {id(t): c for t, c in zip(inputs, ins)}

    def fill(argument):
        if not isinstance(argument, keras.KerasTensor):
            return argument
        shape = (1,) * (len(argument.shape) - 1) + (-1,)
        return np.nan_to_num(values[id(argument)]).astype("float32").reshape(shape)

    args, kwargs = keras_private.call_arguments(outputs[0])
    result = operation(*[fill(a) for a in args], **{k: fill(v) for k, v in kwargs.items()})
    result = np.asarray(keras.ops.convert_to_numpy(result), np.float64).reshape(-1)
    nan = np.any(np.isnan(np.stack(ins)), axis=0)
    return np.where(nan, np.nan, result) if result.shape == nan.shape else None


def _foldable(layer):
    if isinstance(layer, L.Dense):
        return True
    return layer.padding == "valid" or all(k == 1 for k in layer.kernel_size)


def _input_constant(consumer, constants):
    return constants[keras_private.tensor_key(consumer.tensor)]


def _reads(layer, kernel, index):
    """`(row, columns)` of a convolution's kernel that read its input channel `index`.

    A grouped convolution's kernel holds the input channels of one group in its
    rows, and each group's output units in a block of its columns.
    """
    groups = getattr(layer, "groups", 1)
    per_group, width = kernel.shape[-2], kernel.shape[-1] // groups
    group = index // per_group
    return index % per_group, slice(group * width, (group + 1) * width)


def _rows_unused(consumer, kernel, channel):
    if isinstance(consumer.layer, L.Dense):
        return not np.any(kernel[consumer.rows(channel), :])
    row, columns = _reads(consumer.layer, kernel, consumer.offset + channel)
    return not np.any(kernel[..., row, columns])


def _conv_group_of(group):
    """For each grouped convolution that produces or reads `group`'s channels, the
    function from a channel to its group in that convolution."""
    sides = [
        (p.groups, group.size // p.groups) for p in group.producers if getattr(p, "groups", 1) > 1
    ]
    sides += [
        (c.layer.groups, c.width // c.layer.groups)
        for c in group.consumers
        if getattr(c.layer, "groups", 1) > 1
    ]
    return [lambda channel, per=per: channel // per for _, per in sides], [g for g, _ in sides]


def _balanced(removable, group):
    """The removable channels, as many from every group of each grouped convolution."""
    mappings, counts = _conv_group_of(group)
    changed = True
    while changed:
        changed = False
        for group_of, groups in zip(mappings, counts):
            members = [[c for c in removable if group_of(c) == g] for g in range(groups)]
            keep = min(len(m) for m in members)
            balanced = sorted(c for m in members for c in m[:keep])
            changed |= balanced != removable
            removable = balanced
    return removable


# TFLite stores a weight sparse when at least this share of it is zero.
_SPARSE_SHARE = 0.3


def _keeps_block_sparsity(consumer, kernel, removable, align):
    """Whether `consumer`'s kernel, without the removable rows, is stored sparse in whole blocks.

    Only a Dense kernel whose kept zeros all lie in aligned blocks of `align`
    input rows that are zero throughout (a `block="tflite-..."` prune) has blocks
    to keep; a randomly sparse one has none, whatever its share of zeros.
    """
    if not isinstance(consumer.layer, L.Dense):
        return False
    gone = np.zeros(kernel.shape[0], bool)
    gone[[row for channel in removable for row in consumer.rows(channel)]] = True
    if gone.all() or np.mean(kernel[~gone] == 0) < _SPARSE_SHARE:
        return False
    rows = kernel.shape[0] - kernel.shape[0] % align
    if rows == 0:
        return False
    zero = (kernel[:rows] == 0) | gone[:rows, None]
    blocks = zero.reshape(rows // align, align, -1).all(axis=1)
    in_blocks = np.repeat(blocks, align, axis=0)
    kept_zero = (kernel[:rows] == 0) & ~gone[:rows, None]
    return bool(np.all(in_blocks[kept_zero]))


def _aligned(removable, size, align):
    """The removable channels that fill whole aligned blocks of `align`."""
    chosen = set(removable)
    kept = []
    for start in range(0, size, align):
        block = range(start, min(start + align, size))
        if all(c in chosen for c in block):
            kept.extend(block)
    return kept


def _removable(group, values, constants, align=1):
    """The channels of `group` that can go without changing any prediction."""
    removable = []
    for channel in range(group.size):
        ok = True
        for consumer in group.consumers:
            kernel = values[id(consumer.layer)]["kernel"]
            if _rows_unused(consumer, kernel, channel):
                continue
            value = _input_constant(consumer, constants)[consumer.offset + channel]
            if np.isnan(value) or (value != 0 and not _foldable(consumer.layer)):
                ok = False
                break
        if ok:
            removable.append(channel)
    if align > 1 and any(
        _keeps_block_sparsity(c, values[id(c.layer)]["kernel"], removable, align)
        for c in group.consumers
    ):
        # Removing single rows would break the blocks of a block-sparse Dense kernel.
        removable = _aligned(removable, group.size, align)
    return _limited(removable, group)


def _limited(removable, group):
    """`removable`, as many from every group of a grouped convolution, at least one kept."""
    removable = _balanced(removable, group)
    if len(removable) == group.size:
        removable = _balanced(removable[1:], group)  # a layer keeps at least one unit
    return removable


def _removable_heads(group):
    """The heads (key/value groups) of a `HeadGroup` that add nothing; one stays."""
    silent = silent_units(group, lambda variable: keras.ops.convert_to_numpy(variable.value))
    return list(silent[: group.size - 1])


class _Plan:
    """What to keep of each layer's input and output channels, and bias folds."""

    def __init__(self, values):
        self.values = values
        self.keep_out = {}  # layer id -> bool array over output units
        self.keep_in = {}  # layer id -> bool array over kernel input rows/channels
        self.keep_channels = {}  # follower id -> bool array over its channels
        self.bias_fold = {}  # layer id -> array added to the bias
        self.keep_heads = {}  # attention layer id -> (HeadGroup, bool array over its units)
        self.changed = False

    def add_heads(self, group, removed):
        if not removed:
            return
        self.changed = True
        keep = np.ones(group.size, bool)
        keep[removed] = False
        self.keep_heads[id(group.layer)] = (group, keep)

    def resized_attention(self, layer):
        """The config of `layer` (an attention layer) with fewer heads, or `None`."""
        if id(layer) not in self.keep_heads:
            return None
        group, keep = self.keep_heads[id(layer)]
        return group.resized_config(int(keep.sum()))

    def _head_weights(self, layer):
        group, keep = self.keep_heads[id(layer)]
        slices = {id(s.variable): s for s in (*group.masked, *group.biases)}
        kept = np.flatnonzero(keep)
        values = []
        for variable in layer.weights:
            value = keras.ops.convert_to_numpy(variable.value)
            part = slices.get(id(variable))
            values.append(value if part is None else value[part.index(value, kept)])
        return values

    def add(self, group, removed, constants):
        if not removed:
            return
        self.changed = True
        for producer in group.producers:
            keep = self.keep_out.setdefault(id(producer), np.ones(group.size, bool))
            keep[removed] = False
        for follower, offset in group.followers:
            weights = self.values[id(follower)]
            width = next(
                weights[name].shape[axis]
                for name, axis in per_channel_axes(follower).items()
                if axis is not None
            )
            keep = self.keep_channels.setdefault(id(follower), np.ones(width, bool))
            keep[[offset + c for c in removed]] = False
        for consumer in group.consumers:
            kernel = self.values[id(consumer.layer)]["kernel"]
            rows = kernel.shape[0] if isinstance(consumer.layer, L.Dense) else consumer.width
            keep = self.keep_in.setdefault(id(consumer.layer), np.ones(rows, bool))
            constant = _input_constant(consumer, constants)
            fold = self.bias_fold.setdefault(id(consumer.layer), np.zeros(kernel.shape[-1]))
            for channel in removed:
                value = constant[consumer.offset + channel]
                if isinstance(consumer.layer, L.Dense):
                    rows_of = consumer.rows(channel)
                    keep[rows_of] = False
                    if not np.isnan(value) and value != 0:
                        fold += value * kernel[rows_of, :].sum(axis=0)
                else:
                    index = consumer.offset + channel
                    keep[index] = False
                    if not np.isnan(value) and value != 0:
                        row, columns = _reads(consumer.layer, kernel, index)
                        read = kernel[..., row, columns]
                        fold[columns] += value * read.reshape(-1, read.shape[-1]).sum(0)

    def new_units(self, layer):
        keep = self.keep_out.get(id(layer))
        return None if keep is None else int(keep.sum())

    def new_channels(self, layer):
        keep = self.keep_channels.get(id(layer))
        return None if keep is None else int(keep.sum())

    def changes(self, layer):
        return any(
            id(layer) in part
            for part in (
                self.keep_out,
                self.keep_in,
                self.keep_channels,
                self.bias_fold,
                self.keep_heads,
            )
        )

    def adds_bias(self, layer):
        """Whether a constant must be folded into a layer that has no bias (it gets one)."""
        fold = self.bias_fold.get(id(layer))
        return fold is not None and np.any(fold != 0) and not getattr(layer, "use_bias", True)

    def weights_for(self, layer):
        """The old layer's weights, sliced and folded, in the order of its smaller copy's."""
        if id(layer) in self.keep_heads:
            return self._head_weights(layer)
        names = [w.name for w in layer.weights]
        weights = dict(self.values[id(layer)])
        key = id(layer)
        if key in self.keep_channels:
            kept = np.flatnonzero(self.keep_channels[key])
            for name, axis in per_channel_axes(layer).items():
                if axis is not None:
                    weights[name] = np.take(weights[name], kept, axis=axis)
        if key in self.keep_in:
            keep = self.keep_in[key]
            kernel = weights["kernel"]
            if isinstance(layer, L.Dense):
                weights["kernel"] = kernel[keep]
            else:  # per group of a grouped convolution: its rows, its block of columns
                per_group, groups = kernel.shape[-2], getattr(layer, "groups", 1)
                width = kernel.shape[-1] // groups
                weights["kernel"] = np.concatenate(
                    [
                        kernel[..., keep[g * per_group : (g + 1) * per_group], :][
                            ..., g * width : (g + 1) * width
                        ]
                        for g in range(groups)
                    ],
                    axis=-1,
                )
        if self.adds_bias(layer):
            names.append("bias")  # Keras layers create their bias after their kernel
            weights["bias"] = np.zeros(weights["kernel"].shape[-1], weights["kernel"].dtype)
        if key in self.bias_fold and "bias" in weights:
            weights["bias"] = (weights["bias"] + self.bias_fold[key]).astype(weights["bias"].dtype)
        if key in self.keep_out:
            keep = self.keep_out[key]
            weights["kernel"] = weights["kernel"][..., keep]
            if "bias" in weights:
                weights["bias"] = weights["bias"][keep]
        return [weights[name] for name in names]


def _rebuild(plain, plan):
    copies = {}

    def clone_function(layer):
        units = plan.new_units(layer)
        channels = plan.new_channels(layer)
        if isinstance(layer, L.Reshape) and -1 not in layer.target_shape:
            # Keeps the channel axis (or shrink would not have followed it): let it
            # take the channels that are left.
            config = {**layer.get_config(), "target_shape": (*layer.target_shape[:-1], -1)}
            copy = L.Reshape.from_config(config)
        elif plan.resized_attention(layer) is not None:
            copy = layer.__class__.from_config(plan.resized_attention(layer))
        elif units is None and channels is None and not plan.adds_bias(layer):
            copy = fresh_copy(layer)
        else:
            config = layer.get_config()
            if units is not None:
                config[unit_count_key(layer)] = units
            if channels is not None:
                config = resized_config(layer, config, channels)
            if plan.adds_bias(layer):
                config["use_bias"] = True
            copy = layer.__class__.from_config(config)
        copies[id(layer)] = copy
        return copy

    small = keras.models.clone_model(plain, clone_function=clone_function, recursive=True)
    for layer in keras_private.flatten_layers(plain):
        copy = copies.get(id(layer))
        if copy is None or copy is layer or not layer.weights:
            continue
        if plan.changes(layer) or plan.adds_bias(layer):
            values = plan.weights_for(layer)
        else:
            values = [variable.value for variable in layer.weights]
        for variable, value in zip(copy.weights, values, strict=True):
            variable.assign(value)
    return small


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
