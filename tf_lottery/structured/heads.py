"""Attention heads as units: what one head of an attention layer owns.

One head of a `keras.layers.MultiHeadAttention` is its slice of the query, key
and value kernels and biases along their head axis, and its rows of the output
projection's kernel. Under `keras.layers.GroupQueryAttention` the unit is one
key/value group together with the query heads that read it (query head i reads
key/value head i // (num_query_heads // num_key_value_heads)), and the gate's
slices where `use_gate=True`.

`head_groups(model)` returns one `HeadGroup` per attention layer called in a
Sequential or Functional model's graph (nested models included). The heads of
a layer depend on nothing outside it (its output width is `output_shape`, or
the query's), so every layer's heads can be pruned alone, a different number
in each layer. Unit criteria (`tf_lottery.UnitNorm`, ...) prune whole heads by
masking all of their slices, output rows included, so that a pruned head adds
exactly zero; `shrink` rebuilds the layer with fewer heads, `key_dim` (or
`head_dim`) and `output_shape` unchanged.

A head goes only when it is wholly silent: its output rows all zero, or its
value slice (kernel and bias) all zero. A head that unstructured pruning has
only thinned stays.

Attention layers inside other layers (a KerasHub `TransformerEncoder`, say)
are not graph nodes and are not listed here: their block decides their sizes.
`tf_lottery.structured.hub_units` makes a `HeadGroup` of the attention inside a KerasHub
block whose heads can be units (Gemma's).
"""

import dataclasses
import math

import keras
import numpy as np

from tf_lottery.calibration import kernel_layout
from tf_lottery.structured.channels import UnitSlice
from tf_lottery.structured.channels import walk_graph

L = keras.layers


class _MultiHeadAttention:
    """What `keras.layers.MultiHeadAttention` keeps per head."""

    layer_class = L.MultiHeadAttention

    @staticmethod
    def units(layer):
        return layer.num_heads

    @staticmethod
    def width(layer):
        return 1

    @staticmethod
    def projections(layer):
        """(sublayer, per unit width) of the projections that compute a head."""
        return [(layer._query_dense, 1), (layer._key_dense, 1), (layer._value_dense, 1)]

    @staticmethod
    def resized_config(config, units, layer):
        return {**config, "num_heads": units}


class _GroupQueryAttention:
    """What `keras.layers.GroupQueryAttention` keeps per key/value group."""

    layer_class = L.GroupQueryAttention

    @staticmethod
    def units(layer):
        return layer.num_key_value_heads

    @staticmethod
    def width(layer):
        return layer.num_query_heads // layer.num_key_value_heads

    @classmethod
    def projections(cls, layer):
        repeats = cls.width(layer)
        parts = [(layer._query_dense, repeats), (layer._key_dense, 1), (layer._value_dense, 1)]
        if layer.use_gate:
            parts.append((layer._gate_dense, repeats))
        return parts

    @classmethod
    def resized_config(cls, config, units, layer):
        return {
            **config,
            "num_query_heads": units * cls.width(layer),
            "num_key_value_heads": units,
        }


# One entry per attention layer kind; a subclass is read as its base class.
_KINDS = (_GroupQueryAttention, _MultiHeadAttention)


def _kind(layer):
    for kind in _KINDS:
        if isinstance(layer, kind.layer_class):
            return kind
    return None


@dataclasses.dataclass
class HeadGroup:
    """The heads (or key/value groups) of one attention layer, as units.

    It answers what a `channels.ChannelGroup` answers, so that unit criteria
    and `shrink` treat both alike.

    Attributes:
        layer: The attention layer (unwrapped).
        size: Its number of units: heads, or key/value groups.
        incoming: `UnitSlice`s of the kernels that compute each unit (query,
            key, value, and gate).
        output: The `UnitSlice` of the output projection's kernel (its rows).
        biases: `UnitSlice`s of the projections' biases.
        projection: The output projection (a Dense or EinsumDense layer).
        value: The value projection.
        producers: The wrapped layers whose masks hold the unit's slices: the
            attention layer itself, or (inside a KerasHub block, wrapped in
            place) its query, key and value projections.
        tie: Groups with the same tie lose as many units (as `ChannelGroup.tie`):
            the blocks of one KerasHub Backbone. `None` for an attention layer of
            a graph, which keeps its own number of heads.
        masks_consumers: Always `False`: `masked` holds the output rows already.
    """

    layer: keras.layers.Layer
    size: int
    incoming: list
    output: UnitSlice
    biases: list
    projection: keras.layers.Layer
    value: keras.layers.Layer
    producers: list
    blocked: list = dataclasses.field(default_factory=list)
    followers: list = dataclasses.field(default_factory=list)
    tie: object = None
    masks_consumers: bool = False

    @property
    def prunable(self):
        return True

    @property
    def name(self):
        return self.layer.name

    @property
    def masked(self):
        """The `UnitSlice`s a pruned unit's masks zero: its incoming kernels and its
        output rows, so that it adds exactly zero whatever its biases are."""
        return [*self.incoming, self.output]

    def readers(self):
        """`[(output projection, rows)]`: `rows(unit)` are the rows of its kernel's
        [inputs, outputs] matrix that read the unit."""
        projection = self.projection
        layout = kernel_layout(projection)
        shape = projection.kernel.shape
        # The matrix rows run over the kernel's input axes, the head axis first.
        per_head = math.prod(shape[a] for a in layout.kernel_axes[1 : layout.inputs])
        per_unit = per_head * self.output.width
        return [(projection, lambda unit: range(unit * per_unit, (unit + 1) * per_unit))]

    def value_slices(self):
        """The `UnitSlice`s of the value projection (kernel, and bias if any)."""
        return [s for s in (*self.incoming, *self.biases) if _owner(self.value, s.variable)]

    def resized_config(self, units):
        """The layer's config with `units` heads (or key/value groups)."""
        return _kind(self.layer).resized_config(self.layer.get_config(), units, self.layer)


def _owner(sublayer, variable):
    return any(w is variable for w in sublayer.weights)


def head_group(layer):
    """The `HeadGroup` of an attention layer, or `None` for any other layer."""
    kind = _kind(layer)
    if kind is None or not layer.built:
        return None
    incoming, biases = [], []
    for projection, width in kind.projections(layer):
        incoming.append(UnitSlice(projection.kernel, 1, width))
        if projection.bias is not None:
            biases.append(UnitSlice(projection.bias, 0, width))
    output = UnitSlice(layer._output_dense.kernel, 0, kind.width(layer))
    return HeadGroup(
        layer,
        kind.units(layer),
        incoming,
        output,
        biases,
        projection=layer._output_dense,
        value=layer._value_dense,
        producers=[layer],
    )


def head_count(layer):
    """The number of heads (key/value groups under grouped-query attention), or `None`."""
    kind = _kind(layer)
    return None if kind is None else kind.units(layer)


def head_groups(model):
    """Returns the `HeadGroup`s of the attention layers in `model`'s graph.

    Args:
        model: A built Sequential or Functional model, wrapped or not.

    Returns:
        One `HeadGroup` per attention layer, in graph order; a layer called
        twice is listed once.

    Example:

    ```python
    for group in tf_lottery.structured.heads.head_groups(model):
        print(group.name, group.size)
    ```
    """
    groups, seen = [], set()

    def visit(layer, inputs, ins, outputs):
        group = head_group(layer) if id(layer) not in seen else None
        if group is not None:
            seen.add(id(layer))
            groups.append(group)
        return [None] * len(outputs)

    walk_graph(model, {}, visit)
    return groups


def silent_units(group, weight_of):
    """The units of `group` that add exactly zero to the layer's output.

    A unit is silent when its output rows are all zero, or when its values are
    (kernel and bias slices zero): attention then averages zeros.

    Args:
        group: A `HeadGroup`.
        weight_of: A function from a variable to its numpy value.
    """

    def zero(slices):
        return np.all(
            [~np.any(s.per_unit(weight_of(s.variable), group.size), axis=1) for s in slices],
            axis=0,
        )

    return np.flatnonzero(zero([group.output]) | zero(group.value_slices()))
