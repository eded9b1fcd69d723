"""The layer table: what tf_lottery knows of each kind of layer, in one place.

One entry per Keras layer class, a `LayerKind`, says which of its weights are
pruned, whether unit criteria prune its output units, how channels pass through
it (for `channel_groups` and `shrink`), how a follower's per-channel weights are
laid out and resized, and how a constant channel passes through it (what
`shrink` folds into the next layer's bias). The wrappers, the criteria,
`channel_groups`, `shrink` and the report read it; a layer is looked up by its
class and then its base classes, so a subclass of `Dense` is a `Dense`.

A layer of your own joins with one entry:

```python
class Scale(keras.layers.Layer):          # multiplies each channel by a weight
    def build(self, input_shape):
        self.gamma = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.gamma

tf_lottery.register_layer(Scale, tf_lottery.LayerKind(
    channels="follow", per_channel=lambda layer, rank: {"gamma": 0},
    resize=lambda layer, config, channels: config))
```

A layer that only has weights to prune (no channel analysis) can instead define
`get_prunable_weights()`, as with tfmot.

The channel roles:

- `"produce"`: new channels, one per output unit (`units` names the config key):
  Dense, convolutions. Its units are pruned whole and removed by `shrink`.
- `"follow"`: the channel count stays and some weights hold one entry per
  channel (`per_channel(layer, rank)` gives `{weight name: axis}`):
  BatchNormalization, depthwise convolutions, LayerScale. They lose the units of
  the layer that produces their channels.
- `"pass"`: each channel passes alone: activations, pooling, dropout, padding.
- `"merge"`: inputs with the same channels combined elementwise: Add, Multiply.
- `"concatenate"`: the inputs' channels side by side.
- `"flatten"`: positions times channels on one axis, read by a Dense layer.
- `"normalize"`: normalizes over the channels, so none can go alone.
- `"attention"`: its units are heads (`tf_lottery.structured.heads`); the widths it reads
  and writes stay.
- `None`: not known; the channels that reach it are kept, with one warning per
  kind of layer.

`when(layer, inputs, outputs)`, where given, says whether the role holds for
this instance (a Softmax over the channel axis is not elementwise); where it
does not, the layer counts as not known.
"""

import dataclasses
from typing import Callable

import keras
import numpy as np

from tf_lottery import keras_private
from tf_lottery.validators import check_choice

L = keras.layers

ROLES = ("produce", "follow", "pass", "merge", "concatenate", "flatten", "normalize", "attention")
KERNEL_INPUTS = ("rows", "channels")


@dataclasses.dataclass(frozen=True)
class LayerKind:
    """What tf_lottery knows of one kind of layer: one entry of the layer table.

    Attributes:
        prunable: The names of the weights that are pruned (`("kernel",)`).
            Biases and normalization parameters are never pruned.
        channels: How channels pass through it, one of `ROLES`, or `None`
            where that is not known (see the module docstring).
        units: For a producer, the config key of its unit count (`"units"`,
            `"filters"`), which `shrink` sets.
        unit_axis: Whether unit criteria prune its output units whole (the
            last axis of its kernel). Defaults to whether it is a producer.
        per_channel: `(layer, rank) -> {weight name: axis}` of a follower, `None`
            for a weight that is not per channel; returns `None` where this
            instance does not follow its input's channels one by one. `rank`
            is that of the layer's input, or `None` when not known.
        resize: `(layer, config, channels) -> config` of a follower with that
            many channels. Defaults to the config unchanged.
        when: `(layer, inputs, outputs) -> bool`, whether `channels` holds for
            this instance; the input and output `KerasTensor`s are given.
        constant: `(layer, ins, weights, rank) -> array or None`: the layer's
            output channels where its inputs' channels are constant (`ins`, one
            array per input, NaN where a channel is not constant), `weights`
            its weights by name as numpy arrays. Defaults by role: a pass or a
            follower is evaluated on one position, a flatten gives its input, a
            merge or a concatenation combines its inputs' constants.
        kernel_input: For a producer, how its kernel reads the input channels,
            which `shrink` slices: `"rows"`, a kernel `[in, out]` whose rows may
            be a Flatten's positions times its channels (Dense), or
            `"channels"`, a kernel `[..., in per group, out]` read per group
            (the convolutions). Defaults to `"channels"` for a producer (see
            `structured.kernels`).
    """

    prunable: tuple = ()
    channels: str = None
    units: str = None
    unit_axis: bool = None
    per_channel: Callable = None
    resize: Callable = None
    when: Callable = None
    constant: Callable = None
    kernel_input: str = None

    def __post_init__(self):
        check_choice(self.channels, "channels", (*ROLES, None))
        if self.channels == "produce" and not self.units:
            raise ValueError(
                "A producer needs units=, the config key of its unit count (e.g. 'units' or "
                f"'filters'). Received: units={self.units!r}"
            )
        if self.channels == "produce":
            if self.kernel_input is None:
                object.__setattr__(self, "kernel_input", "channels")
            check_choice(
                self.kernel_input,
                "kernel_input",
                KERNEL_INPUTS,
                meaning="how a producer's kernel reads its input",
            )
        elif self.kernel_input is not None:
            raise ValueError(
                "kernel_input says how a producer's kernel reads its input; this entry has "
                f"channels={self.channels!r}. Received: kernel_input={self.kernel_input!r}"
            )
        if self.channels == "follow" and self.per_channel is None:
            raise ValueError(
                "A follower needs per_channel=, a function (layer, rank) -> {weight name: "
                "axis}. Received: per_channel=None"
            )
        if self.unit_axis is None:
            object.__setattr__(self, "unit_axis", self.channels == "produce")


_TABLE = {}


def register_layer(cls, kind):
    """Adds a layer class to the layer table, or replaces its entry.

    Args:
        cls: A `keras.layers.Layer` subclass; its subclasses get the entry too,
            unless they have one of their own.
        kind: Its `LayerKind`.

    Example:

    ```python
    tf_lottery.register_layer(MyActivation, tf_lottery.LayerKind(channels="pass"))
    ```
    """
    if not (isinstance(cls, type) and issubclass(cls, L.Layer)):
        raise ValueError(f"Expected cls to be a keras.layers.Layer subclass. Received: cls={cls!r}")
    if not isinstance(kind, LayerKind):
        raise ValueError(f"Expected kind to be a tf_lottery.LayerKind. Received: kind={kind!r}")
    _TABLE[cls] = kind


_UNKNOWN = LayerKind()


def layer_kind(layer):
    """The `LayerKind` of `layer`: its class's entry, or its nearest base class's."""
    for cls in type(layer).__mro__:
        kind = _TABLE.get(cls)
        if kind is not None:
            return kind
    return _UNKNOWN


def channel_role(layer, inputs, outputs):
    """How channels pass through this call of `layer`: one of `ROLES`, or `None`."""
    kind = layer_kind(layer)
    rank = len(inputs[0].shape) if inputs else None
    if kind.per_channel is not None and kind.per_channel(layer, rank) is not None:
        return "follow"
    if kind.channels is None or kind.channels == "follow":
        return None
    if kind.when is not None and not kind.when(layer, inputs, outputs):
        return None
    return kind.channels


def per_channel_axes(layer, rank=None):
    """`{weight name: axis}` of a layer whose weights follow the channels one by one
    (`None` for a weight that is not per channel), or `None` for any other layer.

    `rank` is that of the layer's input, to check its axis; `None` skips the check
    for a layer already known to be a follower.
    """
    kind = layer_kind(layer)
    return None if kind.per_channel is None else kind.per_channel(layer, rank)


def resized_config(layer, config, channels):
    """`config` of a follower (`per_channel_axes`) for `channels` channels."""
    kind = layer_kind(layer)
    return config if kind.resize is None else kind.resize(layer, config, channels)


def unit_count_key(layer):
    """The config key of a producer's unit count (`"units"`, `"filters"`), else `None`."""
    kind = layer_kind(layer)
    return kind.units if kind.channels == "produce" else None


def has_unit_axis(layer):
    """Whether `layer`'s output units can be pruned whole (Dense, convolutions)."""
    return layer_kind(layer).unit_axis


def without_units():
    """The class names of prunable layers whose units are not pruned whole: neither an
    output-unit axis nor heads (Embedding, EinsumDense, the recurrent layers, ...)."""
    return frozenset(
        cls.__name__
        for cls, kind in _TABLE.items()
        if kind.prunable and not kind.unit_axis and kind.channels != "attention"
    )


def is_prunable(layer):
    """Returns whether `layer` has weights that tf_lottery knows how to prune.

    A layer is prunable if the layer table names weights of its class (Dense,
    EinsumDense, the convolutions, Embedding, MultiHeadAttention,
    GroupQueryAttention, SimpleRNN, LSTM, GRU) or it defines `get_prunable_weights()`.
    """
    if hasattr(layer, "get_prunable_weights"):
        return True
    return bool(layer_kind(layer).prunable)


def prunable_weights(layer):
    """Returns the list of variables of a built `layer` that are pruned."""
    if hasattr(layer, "get_prunable_weights"):
        return list(layer.get_prunable_weights())
    names = layer_kind(layer).prunable
    # All weights, not trainable_weights: a frozen layer's kernel is still a
    # prunable weight, counted by `sparsity`.
    return [w for w in layer.weights if w.name in names] if names else []


def input_axes(layer, variable):
    """The axes of `variable` that `layer` contracts with its input, or `None`.

    Read from the equation of the EinsumDense that owns the kernel (the layer,
    or a sublayer such as MultiHeadAttention's projections): the kernel's
    letters that appear in the input and not in the output. `None` for every
    other weight, whose input axis is the second-to-last (Dense, convolutions).
    """
    for sub in [layer, *keras_private.flatten_layers(layer)]:
        if isinstance(sub, keras.layers.EinsumDense) and sub.kernel is variable:
            return einsum_input_axes(sub.equation)
    return None


def einsum_input_axes(equation):
    """The kernel axes an EinsumDense `equation` contracts: "abc,cde->abde" gives (0,)."""
    operands, output = equation.replace(" ", "").split("->")
    inputs, kernel = operands.split(",")
    return tuple(i for i, letter in enumerate(kernel) if letter in inputs and letter not in output)


# --- The conditions and constants of the entries below. ---


def channels_last(layer, *_):
    """Whether `layer` keeps its channels on the last axis (its `data_format`)."""
    return getattr(layer, "data_format", "channels_last") == "channels_last"


def last_axis(layer, attribute, rank):
    """Whether `layer`'s `attribute` (an axis, or a list of one) is the last of `rank`."""
    axis = getattr(layer, attribute, -1)
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            return False
        axis = axis[0]
    return rank is None or axis in (-1, rank - 1)


def evaluate(layer, ins, weights, rank):
    """`layer` on one position whose channels hold `ins[0]` (NaN: not constant), in
    inference mode: the constant of a layer that acts on each position alone."""
    x = ins[0]
    known = np.nan_to_num(x).astype("float32").reshape((1,) * (rank - 1) + (-1,))
    result = keras.ops.convert_to_numpy(layer(known, training=False))
    result = np.asarray(result, np.float64).reshape(-1)
    return np.where(np.isnan(x), np.nan, result) if result.shape == x.shape else None


def _identity(layer, ins, weights, rank):
    return ins[0]


def _zero_stays_zero(layer, ins, weights, rank):
    """Only an exactly-zero channel stays constant (zero padding changes the rest)."""
    return np.where(ins[0] == 0, 0.0, np.nan)


def _average_pooling(layer, ins, weights, rank):
    return ins[0] if layer.padding == "valid" else _zero_stays_zero(layer, ins, weights, rank)


def _batch_normalization(layer, ins, weights, rank):
    x = ins[0]
    gamma = weights.get("gamma", np.ones_like(x))
    beta = weights.get("beta", np.zeros_like(x))
    mean, variance = weights["moving_mean"], weights["moving_variance"]
    return gamma * (x - mean) / np.sqrt(variance + layer.epsilon) + beta


def _not_constant(layer, ins, weights, rank):
    return None


def merge_constants(layer, ins, weights=None, rank=None):
    """The constant channels of an elementwise merge of constant channels."""
    stacked = np.stack(ins)
    name = type(layer).__name__
    if name == "Add":
        return stacked.sum(axis=0)
    if name == "Subtract":
        return stacked[0] - stacked[1]
    if name == "Average":
        return stacked.mean(axis=0)
    if name == "Maximum":
        return stacked.max(axis=0)
    if name == "Minimum":
        return stacked.min(axis=0)
    product = np.prod(np.nan_to_num(stacked, nan=1.0), axis=0)
    # A product with one exact zero is zero, whatever the other factors are.
    return np.where(
        np.any(stacked == 0, axis=0), 0.0, np.where(np.isnan(stacked).any(0), np.nan, product)
    )


def _concatenate(layer, ins, weights, rank):
    return np.concatenate(ins)


# A role's constant, for an entry that gives none.
_ROLE_CONSTANTS = {
    "follow": evaluate,
    "pass": evaluate,
    "flatten": _identity,
    "merge": merge_constants,
    "concatenate": _concatenate,
}


def constant_channels(layer, role, ins, weights, rank):
    """The constant output channels of a call of `layer` in `role`, by its entry's
    `constant` or its role's default; `None` where neither says (not constant)."""
    constant = layer_kind(layer).constant or _ROLE_CONSTANTS.get(role)
    return None if constant is None else constant(layer, ins, weights, rank)


def _batch_normalization_axes(layer, rank):
    if rank is not None and not last_axis(layer, "axis", rank):
        return None
    return dict.fromkeys((w.name for w in layer.weights), 0)


def _depthwise_axes(layer, rank):
    if layer.depth_multiplier != 1 or not channels_last(layer):
        return None
    return {w.name: -2 if w.name == "kernel" else 0 for w in layer.weights}


def _grouped_as_depthwise_axes(layer, rank):
    """`Conv2D(groups=C)` with C filters, one input channel per group: a depthwise
    convolution, a follower."""
    if (
        channels_last(layer)
        and layer.groups > 1
        and layer.groups == layer.filters
        and layer.kernel.shape[-2] == 1
    ):
        return {w.name: -1 if w.name == "kernel" else 0 for w in layer.weights}
    return None


def _every_weight_axes(layer, rank):
    return dict.fromkeys((w.name for w in layer.weights), 0)


def _normalization_axes(layer, rank):
    """`Normalization` with statistics to adapt (not given as constants), over the last axis."""
    if layer.get_config().get("mean") is not None or not last_axis(layer, "axis", rank):
        return None
    return {w.name: None if w.name == "count" else 0 for w in layer.weights}


def _scalar_rescaling(layer, inputs, outputs):
    return all(np.size(getattr(layer, name)) == 1 for name in ("scale", "offset"))


def _reshape_keeps_channels(layer, inputs, outputs):
    """A `Reshape` that keeps the last axis: channel c of each position stays channel c
    (`Reshape((1, 1, C))` in squeeze-excite)."""
    tensor, output = inputs[0], outputs[0]
    target = tuple(layer.target_shape)
    return (
        tensor.shape[-1] is not None
        and output.shape[-1] == tensor.shape[-1]
        and all(d is not None and d > 0 for d in target[:-1])
    )


def _softmax_over_another_axis(layer, inputs, outputs):
    return not last_axis(layer, "axis", len(inputs[0].shape))


def _concatenate_on_channels(layer, inputs, outputs):
    return last_axis(layer, "axis", len(inputs[0].shape))


def _producer(units, **kind):
    return LayerKind(
        prunable=("kernel",), channels="produce", units=units, when=channels_last, **kind
    )


def _pass(constant=_identity, when=channels_last):
    return LayerKind(channels="pass", when=when, constant=constant)


_CONVOLUTIONS = (L.Conv1D, L.Conv2D, L.Conv3D)
_ENTRIES = {
    L.Dense: _producer("units", kernel_input="rows"),
    **{
        c: _producer(
            "filters",
            per_channel=_grouped_as_depthwise_axes,
            resize=lambda layer, config, channels: {
                **config,
                "filters": channels,
                "groups": channels,
            },
        )
        for c in _CONVOLUTIONS
    },
    **{
        c: LayerKind(prunable=("kernel",), per_channel=_depthwise_axes, unit_axis=True)
        for c in (L.DepthwiseConv1D, L.DepthwiseConv2D)
    },
    L.EinsumDense: LayerKind(prunable=("kernel",)),
    **{
        c: LayerKind(prunable=("kernel",))
        for c in (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
    },
    **{
        c: LayerKind(prunable=("depthwise_kernel", "pointwise_kernel"))
        for c in (L.SeparableConv1D, L.SeparableConv2D)
    },
    L.Embedding: LayerKind(prunable=("embeddings",)),
    # The sublayers' kernels: the query, key, value and output projections.
    L.MultiHeadAttention: LayerKind(prunable=("kernel",), channels="attention"),
    L.GroupQueryAttention: LayerKind(prunable=("kernel",), channels="attention"),
    **{c: LayerKind(prunable=("kernel", "recurrent_kernel")) for c in (L.SimpleRNN, L.LSTM, L.GRU)},
    L.BatchNormalization: LayerKind(
        channels="follow", per_channel=_batch_normalization_axes, constant=_batch_normalization
    ),
    keras_private.LayerScale: LayerKind(
        channels="follow",
        per_channel=_every_weight_axes,
        resize=lambda layer, config, channels: {**config, "projection_dim": channels},
    ),
    L.Normalization: LayerKind(channels="follow", per_channel=_normalization_axes),
    **{c: _pass(evaluate) for c in (L.Activation, L.ReLU, L.LeakyReLU, L.ELU)},
    L.Softmax: _pass(_not_constant, when=_softmax_over_another_axis),
    **{
        c: _pass()
        for c in (
            L.Dropout,
            L.SpatialDropout1D,
            L.SpatialDropout2D,
            L.SpatialDropout3D,
            L.GaussianNoise,
            L.GaussianDropout,
            L.Identity,
            L.MaxPooling1D,
            L.MaxPooling2D,
            L.MaxPooling3D,
            L.Cropping1D,
            L.Cropping2D,
            L.Cropping3D,
            L.UpSampling1D,
            L.UpSampling2D,
            L.UpSampling3D,
            L.GlobalAveragePooling1D,
            L.GlobalAveragePooling2D,
            L.GlobalAveragePooling3D,
            L.GlobalMaxPooling1D,
            L.GlobalMaxPooling2D,
            L.GlobalMaxPooling3D,
        )
    },
    **{
        c: _pass(_average_pooling)
        for c in (L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D)
    },
    **{c: _pass(_zero_stays_zero) for c in (L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D)},
    L.Rescaling: LayerKind(channels="pass", when=_scalar_rescaling, constant=evaluate),
    L.Reshape: LayerKind(channels="pass", when=_reshape_keeps_channels, constant=_identity),
    L.Flatten: LayerKind(channels="flatten"),
    **{
        c: LayerKind(channels="merge")
        for c in (L.Add, L.Subtract, L.Multiply, L.Maximum, L.Minimum, L.Average)
    },
    L.Concatenate: LayerKind(channels="concatenate", when=_concatenate_on_channels),
    **{
        c: LayerKind(channels="normalize")
        for c in (L.LayerNormalization, L.GroupNormalization, L.UnitNormalization)
    },
}
_TABLE.update(_ENTRIES)
