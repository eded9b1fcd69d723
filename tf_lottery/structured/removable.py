"""Which units `shrink` can remove without changing a prediction.

A unit can go when every layer that reads it has all of its weights for it
pruned, or when it outputs a constant that folds exactly into the biases of the
layers that read it (`channel_constants` evaluates those constants through the
graph, in inference mode). Grouped convolutions lose as many channels from every
group, a block-sparse Dense kernel keeps its blocks, and a layer keeps one unit.
"""

import keras
import numpy as np

from tf_lottery import keras_private
from tf_lottery.registry import channel_role
from tf_lottery.registry import constant_channels
from tf_lottery.registry import merge_constants
from tf_lottery.registry import per_channel_axes
from tf_lottery.structured.channels import BINARY_OPERATIONS
from tf_lottery.structured.channels import UNARY_OPERATIONS
from tf_lottery.structured.channels import walk_graph
from tf_lottery.structured.heads import silent_units
from tf_lottery.structured.kernels import kernel_reader

L = keras.layers


def _activation(layer, x):
    function = getattr(layer, "activation", None)
    if function is None:
        return x
    return np.asarray(keras.ops.convert_to_numpy(function(keras.ops.convert_to_tensor(x))))


def channel_constants(model, values):
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


def dead_columns(kernel):
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
        return np.where(dead_columns(kernel), _activation(layer, bias), np.nan)
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


def input_constant(consumer, constants):
    return constants[keras_private.tensor_key(consumer.tensor)]


def _rows_unused(consumer, kernel, channel):
    read, _ = kernel_reader(consumer.layer).read(consumer.layer, kernel, consumer, channel)
    return not np.any(read)


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


def removable_channels(group, values, constants, align=1):
    """The channels of `group` that can go without changing any prediction."""
    removable = []
    for channel in range(group.size):
        ok = True
        for consumer in group.consumers:
            kernel = values[id(consumer.layer)]["kernel"]
            if _rows_unused(consumer, kernel, channel):
                continue
            value = input_constant(consumer, constants)[consumer.offset + channel]
            if np.isnan(value) or (
                value != 0 and not kernel_reader(consumer.layer).foldable(consumer.layer)
            ):
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
    return limited(removable, group)


def limited(removable, group):
    """`removable`, as many from every group of a grouped convolution, at least one kept."""
    removable = _balanced(removable, group)
    if len(removable) == group.size:
        removable = _balanced(removable[1:], group)  # a layer keeps at least one unit
    return removable


def removable_heads(group):
    """The heads (key/value groups) of a `HeadGroup` that add nothing; one stays."""
    silent = silent_units(group, lambda variable: keras.ops.convert_to_numpy(variable.value))
    return list(silent[: group.size - 1])
