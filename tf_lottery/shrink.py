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
from tf_lottery.channels import DEPTHWISE
from tf_lottery.channels import ELEMENTWISE
from tf_lottery.channels import MERGES
from tf_lottery.channels import channel_groups
from tf_lottery.channels import walk_graph
from tf_lottery.samples import random_inputs
from tf_lottery.transforms import fresh_copy
from tf_lottery.transforms import strip
from tf_lottery.wrapper import find_rewind_wrappers

L = keras.layers

# Predictions of the shrunk model may differ from the original's by this much,
# relative to max(1, largest |output|): float error of the folded biases only.
_TOLERANCE = 1e-4


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
        header = f"{'layer':<24} {'units':>13} {'params':>21} {'MACs':>25}"
        lines = [header, "-" * len(header)]
        for r in self.layers:
            lines.append(
                f"{r.layer:<24} {r.units_before:>5} → {r.units_after:<5} "
                f"{r.params_before:>9,} → {r.params_after:<9,} "
                f"{r.macs_before:>11,} → {r.macs_after:<11,}"
            )
        lines.append("-" * len(header))
        lines.append(
            f"{'total':<24} {'':>13} {self.params_before:>9,} → {self.params_after:<9,} "
            f"{self.macs_before:>11,} → {self.macs_after:<11,}"
        )
        return "\n".join(lines)


def _units(layer):
    if isinstance(layer, L.Dense):
        return layer.units
    if isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D)):
        return layer.filters
    return None


def _macs(layer):
    """Multiply-accumulates of one call of `layer` on one example."""
    try:
        shape = tuple(layer.output.shape)
    except (AttributeError, ValueError):  # a shared layer has several outputs
        return 0
    positions = math.prod(d for d in shape[1:-1]) if len(shape) > 2 else 1
    kernel = getattr(layer, "kernel", None)
    if kernel is None:
        return 0
    return int(math.prod(kernel.shape)) * positions


def shrink_report(before, after):
    """Compares two models layer by layer: units, parameters and MACs.

    Args:
        before: A Sequential or Functional model.
        after: The same architecture with fewer units, e.g. `shrink(before)`.

    Returns:
        A `ShrinkReport` with one row per layer with weights; `print()` it.
    """
    before = strip(before) if find_rewind_wrappers(before) else before
    rows = []
    for old, new in zip(keras_private.flatten_layers(before), keras_private.flatten_layers(after)):
        if not old.weights or keras_private.is_graph_model(old):
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


def shrink(model, *, align=1, verbose=0):
    """Returns a plain Keras model without the units that pruning left dead.

    Removes every output unit (Dense neuron, convolution filter, with its
    BatchNormalization and depthwise channels) whose removal does not change the
    model's predictions:

    - all of its outgoing weights are pruned (no layer reads it), or
    - all of its incoming weights are pruned, so it outputs a constant (its bias,
      through BatchNormalization and activation). The constant is folded into the
      bias of each layer that reads it, where that is exact: a Dense layer, or a
      convolution with `padding="valid"` or a 1x1 kernel. A `"same"`-padded
      convolution meets the constant with zero padding at the borders, so there
      the unit stays unless the constant is exactly zero. Unit criteria
      (`tf_lottery.UnitNorm`, ...) make it zero: they mask the unit's bias and
      the γ and β of the BatchNormalization that follows.

    Channels joined by a residual `Add` (or another elementwise merge) go
    together; `Concatenate`, `Flatten`, pooling, padding, activations and
    depthwise convolutions are followed. A group of channels that reaches a
    layer the analysis does not know (a `Lambda`, a custom layer, `Reshape`, a
    subclassed model inside) or the model's output is left as it is, with one warning
    naming the layer. The result is checked on random inputs against `model`;
    it is never a model that predicts differently.

    Args:
        model: A Sequential or Functional model, wrapped (it is stripped first)
            or plain.
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
    if isinstance(align, bool) or not isinstance(align, int) or align < 1:
        raise ValueError(f"Expected align to be a positive integer. Received: align={align!r}")
    if verbose not in (0, 1, True, False):
        raise ValueError(f"Expected verbose to be 0 or 1. Received: verbose={verbose!r}")
    plain = strip(model) if find_rewind_wrappers(model) else model
    groups = channel_groups(plain)
    _warn_blocked(groups)
    values = {id(layer): _weights(layer) for layer in keras_private.flatten_layers(plain)}
    constants = _constants(plain, values)
    plan = _Plan(values)
    for group in groups:
        if group.prunable:
            plan.add(group, _removable(group, values, constants, align), constants)
    if not plan.changed:
        raise ValueError(
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
        if isinstance(layer, (L.Dense, L.Conv1D, L.Conv2D, L.Conv3D)):
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
    reasons = sorted(
        {reason for g in groups if g.producers for reason in g.blocked if "layer '" in reason}
    )
    for reason in reasons:
        warnings.warn(
            f"shrink() leaves some units as they are: {reason}. Units that reach it are kept.",
            stacklevel=3,
        )


def _weights(layer):
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
        out = _constant_of(layer, inputs, ins, values.get(id(layer), {}))
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


def _constant_of(layer, inputs, ins, weights):
    if not ins or any(c is None for c in ins):
        return None
    x = ins[0]
    if isinstance(layer, (L.Dense, L.Conv1D, L.Conv2D, L.Conv3D)):
        kernel = weights["kernel"]
        bias = weights.get("bias", np.zeros(kernel.shape[-1], kernel.dtype))
        return np.where(_dead_columns(kernel), _activation(layer, bias), np.nan)
    if isinstance(layer, DEPTHWISE):
        kernel = weights["kernel"][..., 0]
        channels = kernel.shape[-1]
        bias = weights.get("bias", np.zeros(channels, kernel.dtype))
        dead = ~np.any(kernel.reshape(-1, channels) != 0, axis=0) | (x == 0)
        value = np.where(dead, bias, np.nan)
        if layer.padding == "valid":
            summed = kernel.reshape(-1, channels).sum(axis=0)
            value = np.where(np.isnan(value), x * summed + bias, value)
        return _activation(layer, value)
    if isinstance(layer, L.BatchNormalization):
        gamma = weights.get("gamma", np.ones_like(x))
        beta = weights.get("beta", np.zeros_like(x))
        mean, variance = weights["moving_mean"], weights["moving_variance"]
        return gamma * (x - mean) / np.sqrt(variance + layer.epsilon) + beta
    if isinstance(layer, L.Softmax):
        return None
    if isinstance(layer, (L.Activation, L.ReLU, L.LeakyReLU, L.ELU)):
        known = np.nan_to_num(x)
        result = np.asarray(keras.ops.convert_to_numpy(layer(known[None, :])))[0]
        return np.where(np.isnan(x), np.nan, result)
    if isinstance(layer, (L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D)):
        return x if layer.padding == "valid" else np.where(x == 0, 0.0, np.nan)
    if isinstance(layer, (L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D)):
        return np.where(x == 0, 0.0, np.nan)
    if isinstance(layer, (L.Flatten, *ELEMENTWISE)):
        return x
    if isinstance(layer, L.Concatenate):
        return np.concatenate(ins)
    if isinstance(layer, MERGES):
        return _merge_constants(layer, ins)
    return None


def _merge_constants(layer, ins):
    stacked = np.stack(ins)
    if isinstance(layer, L.Add):
        return stacked.sum(axis=0)
    if isinstance(layer, L.Subtract):
        return stacked[0] - stacked[1]
    if isinstance(layer, L.Average):
        return stacked.mean(axis=0)
    if isinstance(layer, L.Maximum):
        return stacked.max(axis=0)
    if isinstance(layer, L.Minimum):
        return stacked.min(axis=0)
    product = np.prod(np.nan_to_num(stacked, nan=1.0), axis=0)
    # A product with one exact zero is zero, whatever the other factors are.
    return np.where(
        np.any(stacked == 0, axis=0), 0.0, np.where(np.isnan(stacked).any(0), np.nan, product)
    )


def _foldable(layer):
    if isinstance(layer, L.Dense):
        return True
    return layer.padding == "valid" or all(k == 1 for k in layer.kernel_size)


def _input_constant(consumer, constants):
    return constants[keras_private.tensor_key(consumer.tensor)]


def _rows_unused(consumer, kernel, channel):
    if isinstance(consumer.layer, L.Dense):
        return not np.any(kernel[consumer.rows(channel), :])
    return not np.any(kernel[..., consumer.offset + channel, :])


# TFLite stores a weight sparse when at least this share of it is zero.
_SPARSE_SHARE = 0.3


def _keeps_block_sparsity(consumer, kernel, removable):
    """Whether `consumer`'s kernel, without the removable rows, will still be stored sparse."""
    if not isinstance(consumer.layer, L.Dense):
        return False
    gone = {row for channel in removable for row in consumer.rows(channel)}
    kept = kernel[[r for r in range(kernel.shape[0]) if r not in gone]]
    return kept.size > 0 and np.mean(kept == 0) >= _SPARSE_SHARE


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
        _keeps_block_sparsity(c, values[id(c.layer)]["kernel"], removable) for c in group.consumers
    ):
        # Removing single rows would break the blocks of a block-sparse Dense kernel.
        removable = _aligned(removable, group.size, align)
    if len(removable) == group.size:
        removable = removable[1:]  # a layer keeps at least one unit
    return removable


class _Plan:
    """What to keep of each layer's input and output channels, and bias folds."""

    def __init__(self, values):
        self.values = values
        self.keep_out = {}  # layer id -> bool array over output units
        self.keep_in = {}  # layer id -> bool array over kernel input rows/channels
        self.keep_channels = {}  # follower id -> bool array over its channels
        self.bias_fold = {}  # layer id -> array added to the bias
        self.changed = False

    def add(self, group, removed, constants):
        if not removed:
            return
        self.changed = True
        for producer in group.producers:
            keep = self.keep_out.setdefault(id(producer), np.ones(group.size, bool))
            keep[removed] = False
        for follower, offset in group.followers:
            weights = self.values[id(follower)]
            if isinstance(follower, L.BatchNormalization):
                width = weights["moving_mean"].shape[0]
            else:
                width = weights["kernel"].shape[-2]
            keep = self.keep_channels.setdefault(id(follower), np.ones(width, bool))
            keep[[offset + c for c in removed]] = False
        for consumer in group.consumers:
            kernel = self.values[id(consumer.layer)]["kernel"]
            rows = kernel.shape[0] if isinstance(consumer.layer, L.Dense) else kernel.shape[-2]
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
                        fold += value * kernel[..., index, :].reshape(-1, kernel.shape[-1]).sum(0)

    def new_units(self, layer):
        keep = self.keep_out.get(id(layer))
        return None if keep is None else int(keep.sum())

    def weights_for(self, layer):
        """The old layer's weights, sliced and folded for its smaller copy."""
        weights = dict(self.values[id(layer)])
        key = id(layer)
        if key in self.keep_channels:
            keep = self.keep_channels[key]
            for name, value in weights.items():
                if isinstance(layer, L.BatchNormalization):
                    weights[name] = value[keep]
                elif name == "kernel":
                    weights[name] = value[..., keep, :]
                else:
                    weights[name] = value[keep]
        if key in self.keep_in:
            keep = self.keep_in[key]
            kernel = weights["kernel"]
            weights["kernel"] = kernel[keep] if isinstance(layer, L.Dense) else kernel[..., keep, :]
        if key in self.bias_fold and "bias" in weights:
            weights["bias"] = (weights["bias"] + self.bias_fold[key]).astype(weights["bias"].dtype)
        if key in self.keep_out:
            keep = self.keep_out[key]
            weights["kernel"] = weights["kernel"][..., keep]
            if "bias" in weights:
                weights["bias"] = weights["bias"][keep]
        return weights


def _rebuild(plain, plan):
    copies = {}

    def clone_function(layer):
        units = plan.new_units(layer)
        if units is None:
            copy = fresh_copy(layer)
        else:
            config = layer.get_config()
            config["units" if isinstance(layer, L.Dense) else "filters"] = units
            copy = layer.__class__.from_config(config)
        copies[id(layer)] = copy
        return copy

    small = keras.models.clone_model(plain, clone_function=clone_function, recursive=True)
    for layer in keras_private.flatten_layers(plain):
        copy = copies.get(id(layer))
        if copy is None or copy is layer or not layer.weights:
            continue
        weights = plan.weights_for(layer)
        for variable in copy.weights:
            variable.assign(weights[variable.name])
    return small


def _check_same_predictions(before, after):
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
