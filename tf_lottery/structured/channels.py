"""Channel groups: which output units of a model have to be removed together.

Removing output unit c of a Dense or convolution layer changes every layer its
output reaches: the rows of the next layer's kernel, the parameters of a
BatchNormalization or depthwise convolution in between, and, through a residual
`Add`, the units of every other layer added to it. `channel_groups(model)` walks
the model's graph once and returns these dependencies, in the manner of
Torch-Pruning's dependency graph (Fang et al. 2023, "DepGraph").

Each group is one channel space: the output units of one or more producers
(Dense and convolutions; several when joined by an elementwise merge), the
layers whose per-channel parameters follow those units (BatchNormalization,
DepthwiseConv with depth_multiplier 1), and the layers that read them
(consumers, with where the channels sit in their input). A group whose channels
reach a layer the analysis does not understand (a `Lambda`, a custom layer, a
`Reshape` that moves channels, a subclassed model inside) or the model's output is
*blocked*: it is never
pruned or shrunk, and `blocked` says why.

Modern CNNs are followed too: squeeze-excite (a `GlobalAveragePooling` with
`keepdims` or a `Reshape((1, 1, C))`, convolutions, and a broadcast `Multiply`
back onto the channels joins the gate's units to the channels it scales),
operator nodes of a Functional graph (`x + 3`, `x * y`, `keras.ops.hard_sigmoid`),
ConvNeXt's `LayerScale`, grouped convolutions (`Conv2D(groups=g)`: the same
number of channels goes from every group; with `groups=C`, a depthwise
convolution, a follower), `Rescaling` and
`Normalization`. `LayerNormalization` normalizes over the channels, so it
blocks them. So does an attention layer, whose units are its heads
(`tf_lottery.structured.heads`), with a known reason rather than as an unknown layer.

The analysis sees through `PruneWrapper` and `RewindWrapper`, and into nested
Sequential and Functional models: units inside one are pruned and removed like
any others, but channels that enter a nested model keep their number (its input
shape is part of it), so their group is blocked.
"""

import dataclasses
import math

import keras
import numpy as np

from tf_lottery import keras_private
from tf_lottery.registry import channel_role
from tf_lottery.registry import unit_count_key
from tf_lottery.structured.kernels import kernel_reader
from tf_lottery.wrapper import RewindWrapper

L = keras.layers

# Keras operator nodes (keras.ops classes) that act on each element alone, given
# one tensor and constants that are scalars; the binary ones also merge two tensors.
UNARY_OPERATIONS = frozenset(
    (
        "Relu Relu6 Sigmoid Softplus Softsign Silu LeakyRelu HardSigmoid HardSilu Elu Selu "
        "Gelu Celu HardTanh TanhShrink SoftShrink HardShrink LogSigmoid Squareplus Threshold "
        "Negative Absolute Square Sqrt Exp Log Tanh Sign Clip Cast Reciprocal"
    ).split()
)
BINARY_OPERATIONS = frozenset(
    "Add Subtract Multiply Divide TrueDivide Maximum Minimum Power".split()
)


class BlockReason(str):
    """Why a group is blocked: the text, and the layer kind behind it when unknown.

    Attributes:
        kind: The class name of a layer the analysis does not know (or that
            merges channels that do not line up), or `None` for a known cause
            (the model output, a `LayerNormalization`). Warnings are given once
            per kind.
        layer: That layer's name, or `None`.
    """

    def __new__(cls, text, kind=None, layer=None):
        reason = super().__new__(cls, text)
        reason.kind, reason.layer = kind, layer
        return reason


def _reason(reason):
    return reason if isinstance(reason, BlockReason) else BlockReason(reason)


def unknown_kinds(groups):
    """`{kind: [(group, reason), ...]}` of the groups with producers that an unknown layer
    blocks, in order: what to warn about, once per kind."""
    kinds = {}
    for group in groups:
        for reason in group.blocked:
            if group.producers and reason.kind:
                kinds.setdefault(reason.kind, []).append((group, reason))
    return kinds


def per_kind_warning(entries, subject):
    """One warning line for the groups an unknown kind blocks: the first named, the others counted.

    `subject(group)` says what is left alone, e.g. "the units of fc1".
    """
    group, reason = entries[0]
    others = sorted({r.layer for _, r in entries[1:]} - {reason.layer})
    line = f"{subject(group)} as they are: {reason}"
    if len(entries) > 1:
        named = ", ".join(f"'{name}'" for name in others[:3]) + (", ..." if len(others) > 3 else "")
        line += (
            f" (and {len(entries) - 1} more groups"
            + (f", reaching {len(others)} more such layers: {named}" if others else "")
            + ")"
        )
    return line


@dataclasses.dataclass
class Consumer:
    """A layer that reads a group's channels.

    Attributes:
        layer: The layer (Dense or convolution, unwrapped).
        tensor: The symbolic tensor it reads them from.
        offset: Where the group's first channel sits in the layer's input channels.
        width: The number of channels of the layer's input.
        positions: 1, or the number of spatial positions when a `Flatten` lies
            between: input row `p * width + offset + c` then carries channel c.
    """

    layer: keras.layers.Layer
    tensor: object
    offset: int
    width: int
    positions: int = 1

    def rows(self, channel):
        """The input rows of `layer`'s kernel that read `channel` of the group."""
        return [p * self.width + self.offset + channel for p in range(self.positions)]


@dataclasses.dataclass(frozen=True)
class UnitSlice:
    """Where the units of a group sit in one weight: along `axis`, `width` entries each.

    Unit u owns indices `u * width` to `(u + 1) * width - 1` of `axis`: one
    column of a Dense kernel (`axis=-1, width=1`), one attention head of a
    query kernel (`axis=1`), or the query heads of one key/value group under
    grouped-query attention (`axis=1, width=` heads per group).

    Attributes:
        variable: The weight (a Keras variable).
        axis: The axis the units run along.
        width: Entries of `axis` per unit.
    """

    variable: object
    axis: int
    width: int = 1

    def per_unit(self, array, size):
        """`array` (shaped like the weight) as a (size, entries per unit) view."""
        return np.moveaxis(array, self.axis, 0).reshape(size, -1)

    def index(self, array, units):
        """The index of `units`' entries in an array shaped like the weight."""
        axis = self.axis % array.ndim
        entries = [u * self.width + i for u in units for i in range(self.width)]
        return (slice(None),) * axis + (entries,)


@dataclasses.dataclass
class ChannelGroup:
    """Channels that must be removed together; see the module docstring.

    Attributes:
        size: Number of channels.
        producers: Layers whose output units are these channels.
        followers: `(layer, offset)` of BatchNormalization and depthwise layers
            whose per-channel parameters follow the channels.
        consumers: `Consumer`s reading them.
        blocked: Why the group cannot be pruned; empty if it can.
        tie: Groups with the same tie (not `None`) lose as many units as each
            other: the blocks of one KerasHub backbone share one
            `intermediate_dim` (see `tf_lottery.structured.hub_units`).
        masks_consumers: Whether unit criteria mask the consumers' kernel rows
            with each unit, as one unit of a feed-forward network is its up
            and gate columns and its down row. Defaults to `False`: in a graph,
            the rows stay until `shrink` removes them.
    """

    size: int
    producers: list = dataclasses.field(default_factory=list)
    followers: list = dataclasses.field(default_factory=list)
    consumers: list = dataclasses.field(default_factory=list)
    blocked: list = dataclasses.field(default_factory=list)
    tie: object = None
    masks_consumers: bool = False

    @property
    def prunable(self):
        return bool(self.producers) and not self.blocked

    @property
    def name(self):
        """The producers' names, for messages: `"conv1+conv2"`."""
        return "+".join(p.name for p in self.producers) or "(no producer)"

    @property
    def incoming(self):
        """The `UnitSlice`s of the weights that compute each channel: the producers' kernels."""
        return [UnitSlice(p.kernel, -1) for p in self.producers]

    @property
    def masked(self):
        """The `UnitSlice`s a pruned channel's masks zero: its incoming weights. Its unit
        mask (bias, BatchNormalization γ and β) silences the rest of the channel."""
        return self.incoming

    def readers(self):
        """`(layer, rows)` per consumer: `rows(channel)` are the input rows that read
        the channel (of a Dense consumer's kernel: its [inputs, outputs] matrix)."""
        return [(c.layer, c.rows) for c in self.consumers]


def _inner(operation):
    return operation.layer if isinstance(operation, RewindWrapper) else operation


class _Spaces:
    """Union-find over channel spaces; each space becomes a `ChannelGroup`."""

    def __init__(self):
        self.parent = []
        self.groups = []

    def new(self, size, blocked=None):
        self.parent.append(len(self.parent))
        blocked = [_reason(blocked)] if blocked else []
        self.groups.append(ChannelGroup(size, blocked=blocked))
        return len(self.parent) - 1

    def find(self, space):
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def group(self, space):
        return self.groups[self.find(space)]

    def union(self, a, b):
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        self.parent[b] = a
        ga, gb = self.groups[a], self.groups[b]
        ga.producers += gb.producers
        ga.followers += gb.followers
        ga.consumers += gb.consumers
        ga.blocked += gb.blocked

    def block(self, description, reason):
        if description is None:
            return
        for space, _ in description.segments:
            group = self.group(space)
            if reason not in group.blocked:
                group.blocked.append(_reason(reason))

    def result(self):
        roots = sorted({self.find(s) for s in range(len(self.parent))})
        return [self.groups[r] for r in roots]


@dataclasses.dataclass
class _Description:
    """The channels of one tensor: `(space, offset)` segments, and Flatten positions."""

    segments: list
    width: int
    positions: int = 1


def _unknown(spaces, layer, inputs, outputs, why=None):
    kind = "nested model" if keras_private.is_graph_model(layer) else type(layer).__name__
    reason = BlockReason(
        why or f"layer '{layer.name}' ({kind}) reads them, and how it maps channels is not known",
        kind,
        layer.name,
    )
    for description in inputs:
        spaces.block(description, reason)
    described = []
    for tensor in outputs:
        width = tensor.shape[-1] if tensor.shape else None
        if width is None:
            described.append(None)
            continue
        space = spaces.new(width, f"they come from layer '{layer.name}' ({kind})")
        described.append(_Description([(space, 0)], width))
    return described


def _flattened(description, shape):
    positions = math.prod(shape[1:-1])
    return _Description(description.segments, description.width, positions)


def channel_groups(model):
    """Returns the `ChannelGroup`s of a Sequential or Functional `model`.

    Args:
        model: A built Sequential or Functional model, wrapped or not.

    Returns:
        A list of `ChannelGroup`s, in the order of their first producer.

    Example:

    ```python
    for group in tf_lottery.structured.channels.channel_groups(model):
        print(group.name, group.size, group.blocked or "prunable")
    ```
    """
    if not keras_private.is_graph_model(model):
        raise ValueError(
            "Channel groups need the graph of a Sequential or Functional model. Received: "
            f"model of type {type(model).__name__}; a subclassed model has no graph to read."
        )
    spaces = _Spaces()
    described = {}  # tensor key -> _Description, or None when unknown

    def enter(nested, ins):
        # Rebuilding a nested model with another input width is not supported.
        for description in ins:
            spaces.block(
                description,
                f"they enter nested model '{nested.name}', whose input width stays as it is",
            )

    walk_graph(model, described, lambda *call: _describe_call(spaces, *call), enter)
    for tensor in keras_private.graph_outputs(model):
        spaces.block(described.get(keras_private.tensor_key(tensor)), "they reach the model output")
    return [g for g in spaces.result() if g.producers or g.followers or g.consumers]


def walk_graph(model, values, visit, enter=None):
    """Computes a value for every tensor of `model`'s graph, nested models included.

    `visit(layer, inputs, input_values, outputs)` returns the values of one
    call's outputs; `values` (tensor key -> value) receives them. A nested
    Sequential or Functional model is walked into, its inputs taking the values
    of the tensors it is called on, so its layers are seen as the outer ones;
    `enter(nested_model, input_values)` is called first, if given.
    """
    key = keras_private.tensor_key
    for operation, inputs, outputs in keras_private.graph_nodes(model):
        layer = _inner(operation)
        if isinstance(layer, L.InputLayer) and all(key(t) in values for t in outputs):
            continue  # the input of a nested model, already given its value
        ins = [values.get(key(t)) for t in inputs]
        if keras_private.is_graph_model(layer):
            if enter is not None:
                enter(layer, ins)
            for tensor, value in zip(keras_private.graph_inputs(layer), ins):
                values[key(tensor)] = value
            walk_graph(layer, values, visit)
            outs = [values.get(key(t)) for t in keras_private.graph_outputs(layer)]
        else:
            outs = visit(layer, inputs, ins, outputs)
        for tensor, value in zip(outputs, outs):
            values[key(tensor)] = value


def _describe_call(spaces, layer, inputs, ins, outputs):
    """The descriptions of `layer`'s outputs, registering its place in the groups."""
    if isinstance(layer, L.InputLayer) or not inputs:
        return [
            _Description([(spaces.new(t.shape[-1], "they are a model input"), 0)], t.shape[-1])
            for t in outputs
        ]
    if any(d is None for d in ins):
        return _unknown(spaces, layer, ins, outputs)
    if not isinstance(layer, L.Layer):
        return _describe_operation(spaces, layer, inputs, ins, outputs)
    role = channel_role(layer, inputs, outputs)
    (first,) = ins[:1]
    if role == "attention":
        return _attention(spaces, layer, ins, outputs)
    if role == "normalize":
        spaces.block(
            first,
            f"layer '{layer.name}' ({type(layer).__name__}) normalizes over the channels, so "
            "removing one changes the others",
        )
        return [first]
    if role == "produce":
        return _produce(spaces, layer, inputs, ins, outputs)
    if role is None or first.positions > 1:
        return _unknown(spaces, layer, ins, outputs)
    if role == "follow":
        return [_follow(spaces, layer, first)]
    if role == "flatten":
        rank = len(inputs[0].shape)
        return [_flattened(first, inputs[0].shape) if rank > 2 else first]
    if role == "pass":
        return [first]
    if role == "merge":
        return _merge(spaces, layer, inputs, ins, outputs)
    segments, width = [], 0  # "concatenate"
    for description in ins:
        segments += [(space, offset + width) for space, offset in description.segments]
        width += description.width
    return [_Description(segments, width)]


def _produce(spaces, layer, inputs, ins, outputs):
    """A Dense or convolution layer: it reads its input's channels and makes new ones."""
    first = ins[0]
    if first.positions > 1 and not kernel_reader(layer).flattened:
        return _unknown(spaces, layer, ins, outputs)
    if getattr(layer, "groups", 1) > 1 and len(first.segments) > 1:
        # Each group of a grouped convolution must lose as many channels as the
        # others: that is kept within one channel group only.
        return _unknown(spaces, layer, ins, outputs)
    _consume(spaces, layer, inputs[0], first)
    size = getattr(layer, unit_count_key(layer))
    space = spaces.new(size)
    spaces.group(space).producers.append(layer)
    return [_Description([(space, 0)], size)]


def _attention(spaces, layer, ins, outputs):
    """An attention layer: a known reason, not an unknown layer, keeps its channels."""
    kind = type(layer).__name__
    for description in ins:
        spaces.block(
            description,
            f"layer '{layer.name}' ({kind}) reads them, and its input width stays as it is "
            "(its heads are pruned as units of their own)",
        )
    return [
        _Description(
            [(spaces.new(t.shape[-1], f"they come from layer '{layer.name}'"), 0)], t.shape[-1]
        )
        for t in outputs
    ]


def _is_scalar(value):
    return not isinstance(value, keras.KerasTensor) and np.size(value) == 1


def _describe_operation(spaces, operation, inputs, ins, outputs):
    """Operator nodes (`x + 3`, `x * y`, `keras.ops.relu6(x)`): elementwise or merges."""
    kind = type(operation).__name__
    args, kwargs = keras_private.call_arguments(outputs[0])
    constants = [
        a for a in keras.tree.flatten((args, kwargs)) if not isinstance(a, keras.KerasTensor)
    ]
    known = kind in UNARY_OPERATIONS or kind in BINARY_OPERATIONS
    if known and all(_is_scalar(c) for c in constants) and all(d.positions == 1 for d in ins):
        if len(inputs) == 1:
            return [ins[0]]
        if kind in BINARY_OPERATIONS and len(inputs) == 2:
            return _merge(spaces, operation, inputs, ins, outputs)
    return _unknown(spaces, operation, ins, outputs)


def _consume(spaces, layer, tensor, description):
    for space, offset in description.segments:
        spaces.group(space).consumers.append(
            Consumer(layer, tensor, offset, description.width, description.positions)
        )


def _follow(spaces, layer, description):
    for space, offset in description.segments:
        spaces.group(space).followers.append((layer, offset))
    return description


def _broadcast_channels(inputs):
    """Whether `inputs` have the same channels, broadcast over positions of size 1 (the
    gate of squeeze-excite, (1, 1, C), multiplied onto (H, W, C))."""
    shapes = [tuple(t.shape[1:]) for t in inputs]
    if len({len(s) for s in shapes}) != 1 or len({s[-1] for s in shapes}) != 1:
        return False
    return all(len(set(dims) - {1}) <= 1 for dims in zip(*shapes))


def _merge(spaces, layer, inputs, ins, outputs):
    structures = {tuple(spaces.group(s).size for s, _ in d.segments) for d in ins}
    offsets = {tuple(o for _, o in d.segments) for d in ins}
    if not _broadcast_channels(inputs) or len(structures) != 1 or len(offsets) != 1:
        return _unknown(
            spaces,
            layer,
            ins,
            outputs,
            why=f"layer '{layer.name}' ({type(layer).__name__}) merges tensors whose channels "
            "do not line up one to one",
        )
    first = ins[0]
    for other in ins[1:]:
        for (a, _), (b, _) in zip(first.segments, other.segments):
            spaces.union(a, b)
    return [first]
