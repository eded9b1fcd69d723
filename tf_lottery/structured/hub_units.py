"""Units of KerasHub transformer blocks: pruned whole, removed by a rebuild.

A KerasHub Backbone is a Functional model, but each transformer block is one
node of its graph whose `call` runs the block's own Dense or EinsumDense
layers, so `channel_groups` cannot see inside it. `BLOCKS` says, for each
kind of block, where the hidden units of its feed-forward network are: the
columns of the up (and gate) projection kernels and the rows of the down
projection kernel. From that table:

- `feed_forward_groups(model)` gives one `ChannelGroup` per block, so
  `tf_lottery.UnitNorm` and the other unit criteria prune whole feed-forward
  units: up and gate columns, their biases, the down row. The blocks of one
  Backbone are *tied*: its config has one `intermediate_dim`, so every block
  loses as many units, each block choosing its own by score.
- `attention_groups(model)` gives one `heads.HeadGroup` per block whose
  config sets the size of a head (Gemma's `head_dim`): a unit is one
  key/value group with the query heads that read it (one head where there
  are as many key/value heads as query heads). Its query, key and value
  slices and its rows of the output projection are masked, so a pruned group
  adds exactly zero. These blocks are tied too: every block keeps as many
  key/value groups, as the generation cache (one tensor over all blocks) and
  the config's `num_key_value_heads` need, as NVIDIA's Minitron does.
- `hub_shrink.shrink_blocks(model)` (what `tf_lottery.shrink` calls for such a model)
  rebuilds the Backbone, or the Task around it, from its config with the
  smaller `intermediate_dim` (and `num_query_heads`, `num_key_value_heads`),
  copies the surviving weights and checks that it predicts what the model
  predicts.

The heads of the other blocks are not units: the blocks of BERT, GPT-2 and
Llama compute `head_dim = hidden_dim // num_heads`, so a config with fewer
heads would give every head another size, not drop some. `attention_note`
says so once.

Adding a kind of block is one entry of `BLOCKS`. Nothing here imports
keras_hub: blocks are known by the names of their classes.
"""

import dataclasses

import keras

from tf_lottery import keras_private
from tf_lottery.in_place import _sublayers
from tf_lottery.structured.channels import ChannelGroup
from tf_lottery.structured.channels import Consumer
from tf_lottery.structured.channels import UnitSlice
from tf_lottery.structured.heads import HeadGroup


@dataclasses.dataclass(frozen=True)
class AttentionKind:
    """Where the heads of a block's attention are, for a block whose heads are units.

    Attributes:
        layer: The attribute name of the block's attention layer.
        query: The attribute name of the attention's query projection; `key`,
            `value` and `output` likewise.
        head_axis: The axis of the heads in each of the four kernels.
            Defaults to `0`.
        query_heads_key: The config key of the number of query heads.
            Defaults to `"num_query_heads"`.
        groups_key: The config key of the number of key/value heads, the
            units. Defaults to `"num_key_value_heads"`.
    """

    layer: str
    query: str
    key: str
    value: str
    output: str
    head_axis: int = 0
    query_heads_key: str = "num_query_heads"
    groups_key: str = "num_key_value_heads"


@dataclasses.dataclass(frozen=True)
class Tie:
    """What makes groups lose as many units: one Backbone's config key that sets their number.

    Attributes:
        backbone: The `id()` of the Backbone.
        key: The config key, e.g. `"intermediate_dim"`.
    """

    backbone: int
    key: str


@dataclasses.dataclass(frozen=True)
class BlockKind:
    """What tf_lottery knows of one kind of transformer block: where its units are.

    Attributes:
        up: The attribute names of the block's layers whose kernel's last axis
            holds the feed-forward units: the up projection and, in a gated
            block (SwiGLU, GeGLU), the gate.
        down: The attribute name of the layer whose kernel's first axis holds
            them: the down projection.
        config_key: The config key of the block, and of its Backbone, that sets
            their number. Defaults to `"intermediate_dim"`.
        per_unit: How much of `config_key` one unit takes: Gemma's projections
            have `intermediate_dim // 2` units, so 2 there. Defaults to `1`.
        head_dim_key: The config key that sets the size of an attention head,
            where the config has one (Gemma's `head_dim`); `None` where the
            block computes it as `hidden_dim // num_heads`. Defaults to `None`.
        attention: Where the heads are, an `AttentionKind`, for a block whose
            key/value groups are units; only where `head_dim_key` is set, so
            that fewer heads keep their size. Defaults to `None`: heads whole.
    """

    up: tuple
    down: str
    config_key: str = "intermediate_dim"
    per_unit: int = 1
    head_dim_key: str = None
    attention: AttentionKind = None


_DENSE = BlockKind(up=("_feedforward_intermediate_dense",), down="_feedforward_output_dense")
_GATED = BlockKind(
    up=("_feedforward_intermediate_dense", "_feedforward_gate_dense"),
    down="_feedforward_output_dense",
)

# By class name, looked up along the class's MRO, so that a subclass of a known
# block is known too. Read from keras_hub/src: layers/modeling/transformer_*.py,
# models/llama/llama_decoder.py, models/mistral/mistral_transformer_decoder.py,
# models/qwen/qwen_decoder.py, models/gemma/gemma_decoder_block.py.
BLOCKS = {
    "TransformerEncoder": _DENSE,  # BERT, RoBERTa, DistilBERT, ...
    "TransformerDecoder": _DENSE,  # GPT-2, ...
    "LlamaTransformerDecoder": _GATED,  # Llama, Llama 3
    "MistralTransformerDecoder": _GATED,
    "QwenTransformerDecoder": _GATED,
    # keras_hub/src/models/gemma/gemma_attention.py: query kernel (num_query_heads,
    # hidden_dim, head_dim), key and value (num_key_value_heads, hidden_dim, head_dim),
    # output (num_query_heads, head_dim, hidden_dim), no biases; query head i reads
    # key/value head i // (num_query_heads // num_key_value_heads).
    "GemmaDecoderBlock": BlockKind(
        up=("gating_ffw", "gating_ffw_2"),
        down="ffw_linear",
        per_unit=2,
        head_dim_key="head_dim",
        attention=AttentionKind(
            "attention", "query_dense", "key_dense", "value_dense", "output_dense"
        ),
    ),
}


def kind_of(layer):
    """The `BlockKind` of `layer`'s class, or `None` for a layer that is no known block.

    Only a class of keras_hub's own counts: a user's layer that happens to be
    named `TransformerEncoder` (as in the keras.io examples) is no KerasHub
    block, and its feed-forward layers are not where `BLOCKS` says.
    """
    for cls in type(layer).__mro__:
        if cls.__name__ in BLOCKS and cls.__module__.startswith("keras_hub"):
            return BLOCKS[cls.__name__]
    return None


def is_keras_hub(layer, base):
    """Whether `layer` is a KerasHub `base` ("Backbone", "Task") without importing keras_hub."""
    return any(
        cls.__name__ == base and cls.__module__.startswith("keras_hub")
        for cls in type(layer).__mro__
    )


@dataclasses.dataclass(frozen=True)
class Block:
    """A transformer block of a model, with the layers that hold its feed-forward units.

    Attributes:
        layer: The block.
        up: Its up (and gate) projection layers, whose kernel columns are the units.
        down: Its down projection layer, whose kernel rows are the units.
        kind: Its `BlockKind`, from `BLOCKS`.
        backbone: The KerasHub Backbone whose config sets its units, or `None`.
        heads: The key/value groups of its attention as a `heads.HeadGroup`,
            where its kind makes them units; else `None`.
    """

    layer: keras.layers.Layer
    up: tuple
    down: keras.layers.Layer
    kind: BlockKind
    backbone: object
    heads: HeadGroup = None

    @property
    def units(self):
        return self.up[0].kernel.shape[-1]


def _sublayer(block, attribute, what="feed-forward projection", kernel=True):
    layer = getattr(block, attribute, None)
    if not isinstance(layer, keras.layers.Layer) or (
        kernel and getattr(layer, "kernel", None) is None
    ):
        raise ValueError(
            f"BLOCKS says that layer '{block.path}' ({type(block).__name__}) keeps its "
            f"{what} in attribute '{attribute}', but it has no layer"
            + (" with a kernel" if kernel else "")
            + " there. Correct its entry in tf_lottery.structured.hub_units.BLOCKS."
        )
    return layer


def _tie(backbone, key):
    return None if backbone is None else Tie(id(backbone), key)


def _attention_group(block, kind, backbone):
    """The key/value groups of `block`'s attention, as a `HeadGroup`."""
    where = kind.attention
    attention = _sublayer(block, where.layer, "attention layer", kernel=False)
    query, key, value, output = (
        _sublayer(attention, name, f"attention's {name}")
        for name in (where.query, where.key, where.value, where.output)
    )
    axis = where.head_axis
    size = key.kernel.shape[axis]
    width = query.kernel.shape[axis] // size  # query heads per key/value group
    incoming = [
        UnitSlice(query.kernel, axis, width),
        UnitSlice(key.kernel, axis, 1),
        UnitSlice(value.kernel, axis, 1),
    ]
    return HeadGroup(
        attention,
        size,
        incoming,
        UnitSlice(output.kernel, axis, width),
        biases=[],
        projection=output,
        value=value,
        producers=[query, key, value],
        tie=_tie(backbone, where.groups_key),
    )


def in_model_order(model):
    """`model` and every layer inside it, each once, a graph's layers in graph order."""
    layers, seen = [], set()

    def visit(layer):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        layers.append(layer)
        for sub in _sublayers(layer):
            visit(sub)

    visit(model)
    return layers


def feed_forward_blocks(model):
    """The built blocks of `model` that `BLOCKS` knows, in model order.

    Args:
        model: Any Keras model or layer; KerasHub Backbones and Tasks, wrapped
            in place or not.

    Returns:
        A list of `Block`s; empty for a model without such blocks.
    """
    layers = in_model_order(model)
    owners = {}
    for layer in layers:
        if is_keras_hub(layer, "Backbone"):
            for sub in keras_private.flatten_layers(layer):
                owners.setdefault(id(sub), layer)
    blocks, seen = [], set()
    for layer in layers:
        entry = kind_of(layer)
        if entry is None or id(layer) in seen or not layer.built:
            continue
        seen.add(id(layer))
        up = tuple(_sublayer(layer, attribute) for attribute in entry.up)
        down = _sublayer(layer, entry.down)
        backbone = owners.get(id(layer))
        heads = None if entry.attention is None else _attention_group(layer, entry, backbone)
        blocks.append(Block(layer, up, down, entry, backbone, heads))
    return blocks


def feed_forward_groups(model):
    """One `ChannelGroup` per known block of `model`: its feed-forward units.

    The producers are the up (and gate) projections, the consumer the down
    projection, whose rows are masked with each unit (`masks_consumers`). The
    blocks of one Backbone share a `tie`, so they lose as many units.

    Example:

    ```python
    for group in tf_lottery.structured.hub_units.feed_forward_groups(causal_lm):
        print(group.name, group.size)
    ```
    """
    return [
        ChannelGroup(
            block.units,
            producers=list(block.up),
            consumers=[Consumer(block.down, None, 0, block.units)],
            tie=_tie(block.backbone, block.kind.config_key),
            masks_consumers=True,
        )
        for block in feed_forward_blocks(model)
    ]


def attention_groups(model):
    """One `heads.HeadGroup` per known block of `model` whose key/value groups are units.

    A unit is one key/value group with its query heads: their slices of the
    query, key and value kernels and their rows of the output projection. The
    blocks of one Backbone share a `tie`, so they lose as many groups.

    Example:

    ```python
    for group in tf_lottery.structured.hub_units.attention_groups(gemma_lm):
        print(group.name, group.size)
    ```
    """
    return [block.heads for block in feed_forward_blocks(model) if block.heads is not None]


def attention_note(model):
    """Why the attention heads of `model`'s blocks are left whole, or `None` where none is."""
    blocks = feed_forward_blocks(model)
    whole = sorted({type(b.layer).__name__ for b in blocks if b.heads is None})
    if not whole:
        return None
    reason = (
        "such a block computes head_dim = hidden_dim // num_heads, so a config with fewer "
        "heads would change the size of every head, not drop some"
        if all(b.kind.head_dim_key is None for b in blocks if b.heads is None)
        else "tf_lottery.structured.hub_units.BLOCKS does not say where their heads are"
    )
    return (
        f"the attention heads of its {'/'.join(whole)} blocks whole, pruning their "
        f"feed-forward units only: {reason}"
    )
