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
- `shrink_blocks(model)` (what `tf_lottery.shrink` calls for such a model)
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
import math
import warnings

import keras
import numpy as np

from tf_lottery import keras_private
from tf_lottery.in_place import _sublayers
from tf_lottery.structured.channels import ChannelGroup
from tf_lottery.structured.channels import Consumer
from tf_lottery.structured.channels import UnitSlice
from tf_lottery.structured.heads import HeadGroup
from tf_lottery.structured.heads import silent_units
from tf_lottery.structured.shrink import LayerShrink
from tf_lottery.structured.shrink import NothingToShrink
from tf_lottery.structured.shrink import ShrinkReport
from tf_lottery.structured.shrink import _check_same_predictions
from tf_lottery.transforms import strip
from tf_lottery.wrapper import find_rewind_wrappers


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


def _in_model_order(model):
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
    layers = _in_model_order(model)
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


def _value(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable.value))


def _zero_at_zero(layer):
    activation = getattr(layer, "activation", None)
    if activation is None:
        return True
    return not np.any(keras.ops.convert_to_numpy(activation(keras.ops.zeros((1,)))))


def _dead_units(block):
    """The units of `block` that no prediction depends on, as a boolean array.

    A unit is dead when its row of the down projection is zero, or when its
    hidden value is zero whatever the input: its columns and biases in every
    up (and gate) projection are zero, and their activations give 0 at 0.
    """
    units = block.units
    down = _value(block.down.kernel).reshape(units, -1)
    dead = ~down.any(axis=1)
    silent = np.ones(units, bool)
    for layer in block.up:
        silent &= ~_value(layer.kernel).reshape(-1, units).any(axis=0)
        if getattr(layer, "bias", None) is not None:
            silent &= _value(layer.bias) == 0
        if not _zero_at_zero(layer):
            silent[:] = False
    return dead | silent


def _backbone_of(model, blocks):
    backbones = {id(b.backbone): b.backbone for b in blocks}
    if None in [b.backbone for b in blocks] or len(backbones) != 1:
        raise ValueError(
            f"shrink() rebuilds a KerasHub model from its Backbone's config, but the "
            f"transformer blocks of model '{model.name}' belong to "
            f"{len(backbones) - (None in backbones)} Backbones"
            + (" and some to none" if None in [b.backbone for b in blocks] else "")
            + ". Shrink a KerasHub Backbone, or a Task (CausalLM, TextClassifier) around one."
        )
    backbone = next(iter(backbones.values()))
    if model is not backbone and getattr(model, "backbone", None) is not backbone:
        raise ValueError(
            f"shrink() rebuilds a KerasHub model from its Backbone's config, but model "
            f"'{model.name}' holds Backbone '{backbone.name}' inside it as a layer. Shrink the "
            "Backbone, or a Task (CausalLM, TextClassifier) around it."
        )
    return backbone


def _removed(dead, size, what, key):
    """Per block, the units to remove: as many in every block, its dead ones first.

    Args:
        dead: Per block, the indices of its dead units.
        size: The number of units of each block; one stays.
        what: What the units are, for the warning: `"feed-forward units"`.
        key: The config key that sets their number, for the warning.
    """
    count = min(min(len(d) for d in dead), size - 1)
    counts = sorted({len(d) for d in dead})
    if count and len(counts) > 1:
        warnings.warn(
            f"shrink() removes {count} {what} from each of the {len(dead)} "
            f"transformer blocks, though some have more dead ones (from {counts[0]} to "
            f"{counts[-1]}): the blocks of a KerasHub model share one {key}. Prune "
            "every block alike (tf_lottery.prune(model, tf_lottery.UnitNorm(rate)) does) to "
            "remove them all.",
            stacklevel=4,
        )
    return [d[:count] for d in dead], count


def _silent_groups(block):
    """The key/value groups of `block` that add nothing (`heads.silent_units`)."""
    return silent_units(block.heads, _value)


def _any_silent(block):
    return block.heads is not None and len(_silent_groups(block)) > 0


def _check_config(config, backbone, key, units, what, per_unit=1):
    given = config.get(key)
    if given is None or given // per_unit != units:
        raise ValueError(
            f"shrink() sets '{key}' in the config of Backbone '{backbone.name}' to change the "
            f"number of {what}, but its config gives {key}={given!r} for blocks of {units} "
            f"{what}. Correct the entry of its blocks in tf_lottery.structured.hub_units.BLOCKS."
        )


def _smaller_config(backbone, block, units, groups):
    """`backbone`'s config with `units` feed-forward units and `groups` key/value groups per
    block (`groups` is `None` where heads are no units)."""
    config = backbone.get_config()
    kind = block.kind
    key = kind.config_key
    _check_config(config, backbone, key, block.units, "feed-forward units", kind.per_unit)
    config[key] = units * kind.per_unit
    if groups is not None:
        where, heads = kind.attention, block.heads
        query_heads = heads.size * heads.output.width
        _check_config(config, backbone, where.groups_key, heads.size, "key/value groups")
        _check_config(config, backbone, where.query_heads_key, query_heads, "query heads")
        config[where.groups_key] = groups
        config[where.query_heads_key] = groups * heads.output.width
    return config


def _kept(size, removed):
    keep = np.ones(size, bool)
    keep[removed] = False
    return keep


def _copy_weights(plain, small, plain_blocks, small_blocks, removed, removed_groups):
    """Copies every weight of `plain` into `small`, the removed units and groups left out."""
    values = {}
    for block, removed_units, groups in zip(plain_blocks, removed, removed_groups):
        keep = _kept(block.units, removed_units)
        for layer in block.up:
            values[id(layer.kernel)] = _value(layer.kernel)[..., keep]
            if getattr(layer, "bias", None) is not None:
                values[id(layer.bias)] = _value(layer.bias)[keep]
        values[id(block.down.kernel)] = _value(block.down.kernel)[keep]
        if block.heads is not None:
            kept = np.flatnonzero(_kept(block.heads.size, groups))
            for part in (*block.heads.masked, *block.heads.biases):
                value = _value(part.variable)
                values[id(part.variable)] = value[part.index(value, kept)]
    sources, targets = plain.weights, small.weights
    if len(sources) != len(targets):
        raise RuntimeError(
            f"shrink() rebuilt model '{plain.name}' from its config with {len(targets)} weights "
            f"instead of {len(sources)}; it is not returned. Please report this."
        )
    for source, target in zip(sources, targets):
        value = values.get(id(source))
        value = source.value if value is None else value
        if tuple(value.shape) != tuple(target.shape):
            raise RuntimeError(
                f"shrink() rebuilt model '{plain.name}' from its config, but its weight "
                f"'{target.path}' has shape {tuple(target.shape)} where {tuple(value.shape)} "
                "was expected; it is not returned. Please report this."
            )
        target.assign(value)


def sample_inputs(model, backbone, batch=2, length=8):
    """Token inputs for `model`: random token ids, every position real (padding mask 1)."""
    rng = np.random.default_rng(0)
    vocabulary = getattr(backbone, "vocabulary_size", None) or 2
    length = min(length, getattr(backbone, "max_sequence_length", None) or length)

    def fill(name, tensor):
        shape = [batch] + [length if d is None else d for d in tensor.shape[1:]]
        if "padding_mask" in name:
            return np.ones(shape, dtype=tensor.dtype)
        if "token_ids" in name:
            return rng.integers(0, vocabulary, shape).astype(tensor.dtype)
        if "int" in str(tensor.dtype) or "bool" in str(tensor.dtype):
            return np.zeros(shape, dtype=tensor.dtype)
        return rng.normal(size=shape).astype(tensor.dtype)

    if isinstance(model.input, dict):
        return {name: fill(name, tensor) for name, tensor in model.input.items()}
    return keras.tree.map_structure(lambda tensor: fill(tensor.name, tensor), model.input)


def _size(layer):
    """Parameters, and multiply-accumulates per token, of `layer`'s own weights."""
    params = sum(int(math.prod(v.shape)) for v in keras_private.own_variables(layer))
    kernel = getattr(layer, "kernel", None)
    return params, int(math.prod(kernel.shape)) if kernel is not None else 0


def report(plain, small):
    """A `ShrinkReport` of a KerasHub model: its feed-forward layers, its attention
    projections where heads went, then one row for the rest.

    Multiply-accumulates are counted per token, for the layers' kernels; the
    units of an attention projection are its heads.
    """
    rows = []

    def add(old, new, axis):
        (params, macs), (new_params, new_macs) = _size(old), _size(new)
        units = old.kernel.shape[axis], new.kernel.shape[axis]
        rows.append(LayerShrink(old.path, *units, params, new_params, macs, new_macs))

    for old_block, new_block in zip(feed_forward_blocks(plain), feed_forward_blocks(small)):
        for old, new in zip(old_block.up, new_block.up):
            add(old, new, -1)
        add(old_block.down, new_block.down, 0)
        old_heads, new_heads = old_block.heads, new_block.heads
        if old_heads is not None and old_heads.size != new_heads.size:
            axis = old_block.kind.attention.head_axis
            for old, new in zip(
                (*old_heads.producers, old_heads.projection),
                (*new_heads.producers, new_heads.projection),
            ):
                add(old, new, axis)
    before, after = (
        [sum(values) for values in zip(*map(_size, keras_private.flatten_layers(model)))]
        for model in (plain, small)
    )
    rest = (
        before[0] - sum(r.params_before for r in rows),
        after[0] - sum(r.params_after for r in rows),
        before[1] - sum(r.macs_before for r in rows),
        after[1] - sum(r.macs_after for r in rows),
    )
    rows.append(LayerShrink("(every other layer)", 0, 0, *rest))
    return ShrinkReport(tuple(rows))


def shrink_blocks(model, *, verbose=0):
    """A KerasHub Backbone or Task rebuilt without its dead feed-forward units and heads.

    What `tf_lottery.shrink` does for a model whose transformer blocks
    `BLOCKS` knows. A unit is dead when its down-projection row is zero,
    or when its up and gate columns and biases are (`tf_lottery.UnitNorm`
    zeroes all of them). Every block keeps as many units, since the Backbone's
    config has one `intermediate_dim`: as many as the block with the fewest
    dead units leaves. Where key/value groups are units (Gemma), a group is
    dead when its rows of the output projection, or its value slice, are
    zero, and every block keeps as many groups, with the same number of query
    heads each. The model is rebuilt from its config with the smaller
    `intermediate_dim` (and `num_key_value_heads`, `num_query_heads`; a Task
    keeps its class and its preprocessor), the surviving weights are copied,
    and the result is checked on random token ids against `model`; it is
    never a model that predicts differently.

    Args:
        model: A KerasHub Backbone, or a Task (`CausalLM`, `TextClassifier`)
            around one; wrapped (it is stripped first) or plain.
        verbose: `1` prints the layers whose size changed, parameters and
            multiply-accumulates per token before and after. Defaults to `0`.

    Returns:
        A new, uncompiled model of the same class; `generate()` works on a
        CausalLM.

    Example:

    ```python
    causal_lm = tf_lottery.wrap(causal_lm)
    tf_lottery.prune(causal_lm, tf_lottery.UnitNorm(0.5))
    small = tf_lottery.shrink(causal_lm, verbose=1)
    small.generate({"token_ids": ids, "padding_mask": mask}, stop_token_ids=None)
    ```
    """
    backbone = _backbone_of(model, feed_forward_blocks(model))
    plain = strip(model) if find_rewind_wrappers(model) else model
    plain_backbone = plain if model is backbone else plain.backbone
    blocks = feed_forward_blocks(plain_backbone)
    block, kind = blocks[0], blocks[0].kind
    dead = [np.flatnonzero(_dead_units(b)) for b in blocks]
    removed, count = _removed(dead, block.units, "feed-forward units", kind.config_key)
    removed_groups, group_count, groups = [[]] * len(blocks), 0, None
    if block.heads is not None:
        silent = [_silent_groups(b) for b in blocks]
        removed_groups, group_count = _removed(
            silent, block.heads.size, "key/value groups", kind.attention.groups_key
        )
        groups = block.heads.size - group_count
    if not count and not group_count:
        raise NothingToShrink(_nothing_to_remove(model, blocks))
    config = _smaller_config(plain_backbone, block, block.units - count, groups)
    small_backbone = type(plain_backbone).from_config(config)
    if model is backbone:
        small = small_backbone
    else:
        task_config = {**plain.get_config(), "backbone": small_backbone}
        task_config["preprocessor"] = plain.preprocessor
        small = type(plain).from_config(task_config)
    _copy_weights(
        plain, small, blocks, feed_forward_blocks(small_backbone), removed, removed_groups
    )
    _check_same_predictions(plain, small, sample_inputs(plain, plain_backbone))
    if verbose:
        print(report(plain, small))
    return small


def _nothing_to_remove(model, blocks):
    """Why `shrink_blocks` finds nothing to remove in `model`'s `blocks`."""
    heads = blocks[0].heads is not None
    line = (
        f"Model '{model.name}' has no feed-forward unit "
        + ("or key/value group " if heads else "")
        + "that shrink() can remove: a unit goes when it is dead in every transformer block "
        "(its down-projection row, or its up and gate columns, all zero"
        + ("; a group's output-projection rows or value slice" if heads else "")
        + "), and "
    )
    if blocks[0].units == 1 and (not heads or blocks[0].heads.size == 1):
        return line + "a block keeps at least one."
    none = sum(not _dead_units(b).any() and not _any_silent(b) for b in blocks)
    return (
        line + f"{none} of the {len(blocks)} blocks have none. Prune whole units first: "
        "tf_lottery.prune(model, tf_lottery.UnitNorm(0.5))."
    )
