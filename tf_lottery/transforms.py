"""`wrap` and `strip`: whole-model transforms that add and remove the wrappers."""

import warnings

import keras
from keras import ops

from tf_lottery import in_place as _in_place
from tf_lottery import keras_private
from tf_lottery.registry import is_prunable
from tf_lottery.registry import prunable_weights
from tf_lottery.validators import check_choice
from tf_lottery.wrapper import KEEP
from tf_lottery.wrapper import PruneWrapper
from tf_lottery.wrapper import RewindWrapper
from tf_lottery.masking import assign_copy
from tf_lottery.wrapper import constructing_unwrapped
from tf_lottery.wrapper import find_rewind_wrappers
from tf_lottery.wrapper import find_wrappers


def _weight_units(model):
    """The layers that carry `model`'s weights, in tracking order.

    A wrapper, a prunable layer and a layer with variables of its own each count
    as one unit; other containers are walked into. The same model with and
    without wrappers gives the same sequence, which is how `wrap` and `strip`
    carry weights from a model to its copy.
    """
    units, seen = [], set()

    def visit(layer):
        for sub in keras_private.direct_sublayers(layer):
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            if isinstance(sub, RewindWrapper) and not isinstance(sub, PruneWrapper):
                # Only saved copies: the wrapped layer stands for it.
                sub = sub.layer
            own = keras_private.own_variables(sub)
            if (
                isinstance(sub, PruneWrapper)
                or is_prunable(sub)
                or own
                or not keras_private.direct_sublayers(sub)
            ):
                units.append(sub)
            else:
                visit(sub)

    visit(model)
    return units


def _copy_weights(source, target, masked):
    """Assigns `source`'s layer weights to `target`'s, matched in tracking order.

    For a subclassed model rebuilt from its config, where there is no graph to
    match layers by; `clone_model` copies record their pairs instead.
    """
    sources, targets = _weight_units(source), _weight_units(target)
    if len(sources) != len(targets):
        raise ValueError(
            f"Could not match the layers of model '{source.name}' with its rebuilt copy "
            f"({len(sources)} vs {len(targets)} layers with weights). The model may create "
            "layers in a way that depends on more than its config."
        )
    _copy_pairs(source, zip(sources, targets), masked)


def _copy_pairs(source, pairs, masked):
    """Assigns each `(layer, copy)` pair's weights, multiplying in masks if `masked`.

    Either side may be a wrapper; the wrapped layers' weights are copied.
    """
    for src, dst in pairs:
        src_layer = src.layer if isinstance(src, RewindWrapper) else src
        dst_layer = dst.layer if isinstance(dst, RewindWrapper) else dst
        values = [v.value for v in src_layer.weights]
        if masked and isinstance(src, PruneWrapper):
            masks = {id(m.variable): m.mask for m in src.masked_weights}
            values = [
                ops.multiply(value, ops.cast(masks[id(v)].value, value.dtype))
                if id(v) in masks
                else value
                for v, value in zip(src_layer.weights, values)
            ]
        if type(src_layer) is not type(dst_layer) or [
            tuple(v.shape) for v in src_layer.weights
        ] != [tuple(v.shape) for v in dst_layer.weights]:
            raise ValueError(
                f"Could not match layer '{src_layer.name}' of model '{source.name}' with "
                f"'{dst_layer.name}' of its rebuilt copy. The model may create layers in "
                "an order that depends on more than its config."
            )
        for variable, value in zip(dst_layer.weights, values):
            assign_copy(variable, value)


def _wrap_in_place(model, exclude, keep):
    """`wrap(model, in_place=True)`: wrappers attached to the model's own layers."""
    if isinstance(model, keras.Sequential):
        raise ValueError(
            f"Model '{model.name}' is a Sequential model, which tf_lottery.wrap() wraps as "
            "a copy. Received: in_place=True. Call tf_lottery.wrap(model) without it."
        )
    if not model.built:
        raise ValueError(
            f"tf_lottery.wrap() needs a built model, and subclassed model '{model.name}' is "
            "not built yet. Call it on a batch of data (model(x)) or model.build(shape) "
            "first, or write tf_lottery.PruneWrapper(layer) in its __init__."
        )
    patterns = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    prune, rewind, frozen, excluded, unreached = _in_place.plan(model, patterns)
    # A pattern must name a prunable layer: one that only matches a LayerNormalization
    # (never pruned anyway) is most likely a typo.
    unknown = [p for p in patterns if not _in_place.matching(excluded + frozen, p)]
    if unknown:
        raise ValueError(
            f"exclude names no prunable layer of model '{model.name}': {unknown}. Prunable "
            f"layers: {[layer.path for layer in prune + frozen] or 'none'}. Received: "
            f"exclude={list(patterns)}"
        )
    if not prune:
        raise ValueError(
            f"Model '{model.name}' has nothing to prune: no trainable Dense, EinsumDense, "
            "convolution, Embedding, attention or RNN layer"
            + (f" outside exclude={list(patterns)}" if patterns else "")
            + " was found, in any layer"
            + (f" (frozen: {[layer.path for layer in frozen]})." if frozen else ".")
        )
    if frozen:
        warnings.warn(
            "wrap() leaves the frozen (trainable=False) layers "
            f"{[layer.path for layer in frozen]} as they are: they are not pruned, and count "
            "as dense in tf_lottery.sparsity(). To prune one, set its trainable = True first.",
            stacklevel=3,
        )
    if unreached:
        warnings.warn(
            "wrap() prunes no weight of "
            + ", ".join(f"'{layer.path}' ({type(layer).__name__})" for layer in unreached)
            + ": tf_lottery does not know which of their weights are prunable (they are "
            "rewound only). To prune them, give the layer class a get_prunable_weights() "
            "method that returns those variables.",
            stacklevel=3,
        )
    _in_place.attach(model, prune, rewind, keep=keep)
    return model


def fresh_copy(layer):
    """A new layer like `layer`, or `layer` itself when it holds no variables.

    A layer without variables (Lambda, Flatten, activations) can serve the copy
    as it is, and rebuilding a Lambda from its config fails in Keras' safe mode.
    Nested models are walked into by `clone_model` itself.
    """
    if isinstance(layer, keras.layers.Layer) and not layer.variables:
        return layer
    return layer.__class__.from_config(layer.get_config())


def _needs_in_place(model):
    """Whether a config copy of `model` could not stand for it.

    A copy is a plain Functional model built from configs: it loses a subclass
    (a KerasHub `CausalLM` and its `generate()`), and wrappers in its graph
    cannot reach layers that a composite layer calls inside itself
    (`TransformerEncoder`'s Dense layers).
    """
    if not keras_private.is_graph_model(model):
        return True
    for layer in [model, *keras_private.flatten_layers(model)]:
        if isinstance(layer, keras.Model):
            if not keras_private.is_plain_graph_model(layer):
                return True
        elif not is_prunable(layer) and any(
            is_prunable(sub) for sub in keras_private.flatten_layers(layer)
        ):
            return True
    return False


def _layers_to_prune(model, exclude):
    """The names of the layers `wrap` prunes: trainable prunable layers not in `exclude`.

    Raises a ValueError if `exclude` names other layers or nothing is left to
    prune, and warns of frozen layers, which stay unwrapped.
    """
    if isinstance(exclude, str):
        exclude = (exclude,)
    exclude = set(exclude)
    layers = keras_private.flatten_layers(model)
    candidates = [layer for layer in layers if is_prunable(layer) and prunable_weights(layer)]
    frozen = {layer.name for layer in candidates if not layer.trainable}
    prunable = {layer.name for layer in candidates} - frozen
    unknown = sorted(exclude - prunable - frozen)
    if unknown:
        raise ValueError(
            f"exclude names layers that are not prunable layers of model '{model.name}': "
            f"{unknown}. Prunable layers: {sorted(prunable | frozen)}. "
            f"Received: exclude={sorted(exclude)}"
        )
    if not prunable - exclude:
        if prunable:
            reason = f"all its prunable layers are excluded. Received: exclude={sorted(exclude)}"
        elif frozen:
            reason = (
                f"its prunable layers {sorted(frozen)} are frozen (trainable=False), and "
                "wrap() leaves frozen layers as they are. Set layer.trainable = True on "
                "the layers to prune before calling wrap()."
            )
        else:
            reason = "it has no Dense, convolution, Embedding, attention or RNN layer."
        raise ValueError(f"Model '{model.name}' has nothing to prune: {reason}")
    if frozen - exclude:
        warnings.warn(
            f"wrap() leaves the frozen (trainable=False) layers {sorted(frozen - exclude)} "
            "unwrapped: they are not pruned, and count as dense in tf_lottery.sparsity(). "
            "To prune one, set its trainable = True before wrap(); to keep a wrapped layer "
            "fixed while others prune, use IterativePruning(frozen=[...]).",
            stacklevel=3,
        )
    return prunable - exclude


def wrap(model, *, exclude=(), in_place=None, keep="rewind"):
    """Returns `model` ready to prune: every prunable layer with masks and θ0.

    Every prunable layer (Dense, EinsumDense, convolutions, Embedding,
    MultiHeadAttention, RNNs, or any layer with `get_prunable_weights()`) gets
    a `PruneWrapper`; every other layer with weights (BatchNormalization,
    LayerNormalization, excluded layers, your own layers) a `RewindWrapper`,
    which keeps θ0 and the rewind point of all its weights, so that a rewind
    puts the whole model back, BN moving statistics included. The current
    weights become the initial weights (θ0) that pruning rewinds to. Frozen
    layers (`trainable=False`) are left as they are: neither pruned nor rewound.

    There are two ways to do it, and `in_place` chooses:

    - **A copy** (plain Sequential and Functional models of Keras layers): the
      model is rebuilt from its config with wrappers in its graph; the original
      is not changed. Nested models are wrapped too, a layer shared by two calls
      gets one wrapper, and a layer without weights is reused as it is.
    - **In place** (a Functional subclass such as every KerasHub Backbone and
      Task, a subclassed model, or any model whose composite layers hold
      prunable layers inside, such as a `TransformerEncoder`): the model itself
      is changed and returned, keeping its class (`generate()` still works) and
      its layers, with wrappers attached beside them rather than put in the
      graph. Nothing is rebuilt from a config. Layers are known by their path
      (`transformer_layer_0/self_attention/query`) in `sparsity()`, `exclude`,
      `per_layer` and `frozen`. Save with `model.save()`; load with
      `tf_lottery.load_model` to get the pruning state back (a plain
      `keras.models.load_model` gives the model, pruned weights zero, without
      it). See docs/in_place.md.

    Args:
        model: A built Keras model.
        exclude: Names of prunable layers not to prune (for example the first
            convolution, which Han et al. found most sensitive); they are still
            rewound. In place, names, paths or glob patterns of paths
            (`"*/query"`). Defaults to `()`.
        in_place: `True` to change `model` itself, `False` to return a wrapped
            copy, `None` to copy where a copy can stand for the model and work
            in place otherwise (see above). Defaults to `None`.
        keep: What the wrappers keep beside the masks, for rewinding. `"rewind"`:
            one copy of every weight, θ0, which the rewind point replaces once
            `IterativePruning(rewind=k)` (or `save_rewind_point`) saves one;
            from then on the model can rewind to epoch k but no longer to θ0.
            Enough for `IterativePruning` with `rewind="init"` or `rewind=k`
            and for `find_winning_ticket`. `"both"`: θ0 and a rewind point,
            two copies, to rewind to either. `"masks"`: no copy, for flows that
            never rewind (`GradualPruning`, one-shot `prune`,
            `IterativePruning(rewind=None)`); a callback that would rewind
            refuses the model before it trains. Saved in the wrappers' config,
            so a loaded model has the same variables. Defaults to `"rewind"`.

    Returns:
        The wrapped model: a new, uncompiled model, or `model` itself in place.

    Example:

    ```python
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(300, "relu"),
                              keras.layers.Dense(10)])
    pruned = tf_lottery.wrap(model, exclude=["dense_1"])
    gradual = tf_lottery.wrap(model, keep="masks")  # never rewinds: no copies

    causal_lm = keras_hub.models.GPT2CausalLM(backbone, preprocessor=None)
    causal_lm = tf_lottery.wrap(causal_lm)  # in place: generate() still works
    ```
    """
    if in_place not in (None, True, False):
        raise ValueError(f"Expected in_place=None, True or False. Received: in_place={in_place!r}")
    check_choice(keep, "keep", KEEP, meaning="what the wrappers keep to rewind to")
    if not isinstance(model, keras.Model):
        raise ValueError(
            "tf_lottery.wrap() expects a Keras model: a Sequential or Functional model, or a "
            f"built subclassed one. Received: model of type {type(model).__name__}."
        )
    if find_rewind_wrappers(model):
        raise ValueError(
            f"Model '{model.name}' already contains PruneWrapper layers: wrap() was "
            "called on it before. Use the model as it is, or strip() it first."
        )
    if in_place is None:
        in_place = _needs_in_place(model)
    if in_place:
        return _wrap_in_place(model, exclude, keep)
    if _needs_in_place(model):
        raise ValueError(
            "tf_lottery.wrap(in_place=False) copies a plain Sequential or Functional model "
            f"through its config. Model '{model.name}' of type {type(model).__name__} is a "
            "subclass, or holds prunable layers inside composite layers, so a copy would "
            "lose its class or miss those layers. Use in_place=True (the default for it)."
        )
    to_prune = _layers_to_prune(model, exclude)

    # Each copy is paired with its original as clone_model makes it: weights
    # then go to the right layer whatever order the layers were created in.
    pairs = []

    def clone_function(layer):
        copy = fresh_copy(layer)
        if copy is layer or not isinstance(layer, keras.layers.Layer):
            return copy
        if not layer.trainable or not layer.weights:  # Dropout's seed is a variable, not a weight
            pairs.append((layer, copy))  # built as the clone runs; weights copied after
            return copy
        # Built like the original, so layers whose build takes more than one
        # shape (MultiHeadAttention) are ready before the wrapper builds, and
        # given the original's weights at once: the copy's random ones are then
        # freed layer by layer, not all held until the whole model is cloned.
        copy.build_from_config(layer.get_build_config())
        _copy_pairs(model, [(layer, copy)], masked=False)
        if layer.name in to_prune:
            return PruneWrapper(copy, keep=keep)
        return RewindWrapper(copy, keep=keep)

    clone = keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    _copy_pairs(model, pairs, masked=False)
    for wrapper in find_rewind_wrappers(clone):
        wrapper.save_initial_weights()
    return clone


def _copy_of_in_place(model):
    """A plain copy of a model wrapped in place, its weights multiplied by their masks."""
    state = _in_place.state_of(model)
    try:
        config = keras.saving.serialize_keras_object(model)
        # The copy is returned uncompiled: without the compile config, Keras does
        # not warn that a Task's custom compile() could not be restored.
        config.pop("compile_config", None)
        clone = keras.saving.deserialize_keras_object(config)
        if not clone.built:
            clone.build_from_config(model.get_build_config())
    except Exception as error:  # a config that does not rebuild the model raises anything
        raise ValueError(
            f"strip() copies model '{model.name}' through its config, and that failed: "
            f"{type(error).__name__}: {error}. Call tf_lottery.strip(model, in_place=True) "
            "to take the pruning state off the model itself instead."
        ) from error
    if getattr(model, "preprocessor", None) is not None:
        # A KerasHub tokenizer's vocabulary is an asset, which a config does not
        # carry: the copy's preprocessor could not tokenize. It holds no pruned
        # weight, so the copy shares the model's.
        clone.preprocessor = model.preprocessor
    state_ids = {id(v) for v in state.state_variables()}
    # Every masked variable: pruned weights, and the biases (BN γ, β) of pruned units.
    masks = {id(v): m for w in state.wrappers for v, m in w._mask_pairs}
    sources = [v for v in model.weights if id(v) not in state_ids]
    targets = clone.weights
    if [tuple(v.shape) for v in sources] != [tuple(v.shape) for v in targets]:
        raise ValueError(
            f"strip() rebuilt model '{model.name}' from its config, but the copy's weights "
            "differ from the model's. Call tf_lottery.strip(model, in_place=True) instead."
        )
    for source, target in zip(sources, targets):
        value = source.value
        if id(source) in masks:
            value = ops.multiply(value, ops.cast(masks[id(source)].value, value.dtype))
        assign_copy(target, value)
    return clone


def strip(model, *, in_place=False):
    """Returns a plain Keras model without wrappers, with weights = weight * mask.

    The result has no tf_lottery objects in it: it saves, loads and converts like
    any Keras model, and gives the same predictions as `model`. The original
    model is not changed. A subclassed model is rebuilt from its config (it needs
    a working `get_config()`), with each `PruneWrapper(layer)` in its `__init__`
    replaced by the layer itself.

    A model wrapped in place (see `wrap`) is copied through its config
    (`keras.saving.serialize_keras_object`), keeping its class; with
    `in_place=True` the pruning state is taken off the model itself instead
    (masks applied, constraints removed), for models whose config does not
    rebuild them.

    Args:
        model: A Keras model containing `PruneWrapper` layers.
        in_place: For a model wrapped in place, `True` strips the model itself
            and returns it. Defaults to `False`.

    Returns:
        A new, uncompiled Keras model, or `model` itself with `in_place=True`.

    Example:

    ```python
    plain = tf_lottery.strip(pruned)
    plain.save("pruned_plain.keras")
    ```
    """
    if not find_wrappers(model):
        raise ValueError(
            f"Model '{model.name}' has no PruneWrapper layers, so there is nothing to "
            "strip. Received: a model that was never wrapped."
        )
    if _in_place.state_of(model) is not None:
        return _in_place.detach(model) if in_place else _copy_of_in_place(model)
    if in_place:
        raise ValueError(
            f"strip(in_place=True) is for models wrapped in place; model '{model.name}' has "
            "wrappers in its graph. Call tf_lottery.strip(model) for a plain copy."
        )
    if keras_private.is_graph_model(model):
        pairs = []

        def clone_function(layer):
            copy = fresh_copy(layer.layer if isinstance(layer, RewindWrapper) else layer)
            if copy is not layer and isinstance(layer, keras.layers.Layer):
                pairs.append((layer, copy))
            return copy

        clone = keras.models.clone_model(model, clone_function=clone_function, recursive=True)
        _copy_pairs(model, pairs, masked=True)
        return clone
    try:
        config = model.get_config()
        with constructing_unwrapped():
            clone = model.__class__.from_config(config)
    except (NotImplementedError, TypeError) as error:
        raise ValueError(
            f"strip() rebuilds subclassed model '{model.name}' from its config, but "
            f"{type(model).__name__}.get_config()/from_config() failed: {error}. "
            "Give the model a get_config() that returns its __init__ arguments."
        ) from error
    clone.build_from_config(model.get_build_config())
    _copy_weights(model, clone, masked=True)
    return clone
