"""`shrink` for KerasHub models: the Backbone, or the Task around it, rebuilt from a smaller config.

The blocks' pruned feed-forward units (and Gemma's key/value groups) are read from
the masks that `hub_units`' groups left; the config gets the smaller
`intermediate_dim` (and `num_query_heads`, `num_key_value_heads`), the surviving
weights are copied, and the smaller model must predict what the pruned one predicts.
"""

import math
import warnings

import keras
import numpy as np

from tf_lottery import keras_private
from tf_lottery.structured.heads import silent_units
from tf_lottery.structured.hub_units import feed_forward_blocks
from tf_lottery.structured.shrink import LayerShrink
from tf_lottery.structured.shrink import NothingToShrink
from tf_lottery.structured.shrink import ShrinkReport
from tf_lottery.structured.shrink import _check_same_predictions
from tf_lottery.transforms import strip
from tf_lottery.wrapper import find_rewind_wrappers


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
