"""`wrap` and `strip`: whole-model transforms that add and remove the wrappers."""

import warnings

import keras
from keras import ops

from tf_lottery import keras_private
from tf_lottery.registry import is_prunable
from tf_lottery.registry import prunable_weights
from tf_lottery.wrapper import PruneWrapper
from tf_lottery.wrapper import RewindWrapper
from tf_lottery.wrapper import assign_copy
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
    """Assigns `source`'s layer weights to `target`'s, multiplying in masks if `masked`."""
    sources, targets = _weight_units(source), _weight_units(target)
    if len(sources) != len(targets):
        raise ValueError(
            f"Could not match the layers of model '{source.name}' with its rebuilt copy "
            f"({len(sources)} vs {len(targets)} layers with weights). The model may create "
            "layers in a way that depends on more than its config."
        )
    for src, dst in zip(sources, targets):
        src_layer = src.layer if isinstance(src, PruneWrapper) else src
        dst_layer = dst.layer if isinstance(dst, PruneWrapper) else dst
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


def fresh_copy(layer):
    """A new layer like `layer`, or `layer` itself when it holds no variables.

    A layer without variables (Lambda, Flatten, activations) can serve the copy
    as it is, and rebuilding a Lambda from its config fails in Keras' safe mode.
    Nested models are walked into by `clone_model` itself.
    """
    if isinstance(layer, keras.layers.Layer) and not layer.variables:
        return layer
    return layer.__class__.from_config(layer.get_config())


def wrap(model, *, exclude=()):
    """Returns a copy of `model` with every prunable layer in a `PruneWrapper`.

    The copy has the same architecture and the same weights: a pretrained model
    can be pruned, and its current weights become the initial weights (θ0) that
    pruning rewinds to. Every other layer with weights (BatchNormalization,
    LayerNormalization, excluded layers, your own layers) gets a `RewindWrapper`,
    which keeps θ0 and the rewind point of all its weights, so that a rewind
    puts the whole model back, BN moving statistics included. Frozen layers
    (`trainable=False`) are left as they are: neither pruned nor rewound. The
    original model is not changed. Nested Sequential and Functional models are
    wrapped too, a layer shared by two calls gets one wrapper (one mask), and a
    layer without weights (`Lambda`, `Flatten`) is reused as it is. For a
    subclassed model, write `PruneWrapper(layer)` (and `RewindWrapper(layer)`)
    in its `__init__` instead.

    Args:
        model: A built Sequential or Functional Keras model.
        exclude: Names of prunable layers not to prune (for example the first
            convolution, which Han et al. found most sensitive); they are still
            rewound. Defaults to `()`.

    Returns:
        A new, uncompiled Keras model.

    Example:

    ```python
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(300, "relu"),
                              keras.layers.Dense(10)])
    pruned = tf_lottery.wrap(model, exclude=["dense_1"])
    ```
    """
    if not keras_private.is_graph_model(model):
        raise ValueError(
            "tf_lottery.wrap() expects a Sequential or Functional model. Received: "
            f"model of type {type(model).__name__}. In a subclassed model, write "
            "tf_lottery.PruneWrapper(layer) in __init__ instead."
        )
    if isinstance(exclude, str):
        exclude = (exclude,)
    exclude = set(exclude)
    layers = keras_private.flatten_layers(model)
    if any(isinstance(layer, RewindWrapper) for layer in layers):
        raise ValueError(
            f"Model '{model.name}' already contains PruneWrapper layers: wrap() was "
            "called on it before. Use the model as it is, or strip() it first."
        )
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
            stacklevel=2,
        )

    def clone_function(layer):
        copy = fresh_copy(layer)
        if (
            copy is layer
            or not isinstance(layer, keras.layers.Layer)
            or not layer.trainable
            or not layer.weights  # Dropout's seed state is a variable, not a weight
        ):
            return copy
        # Built like the original, so layers whose build takes more than one
        # shape (MultiHeadAttention) are ready before the wrapper builds.
        copy.build_from_config(layer.get_build_config())
        if layer.name in prunable - exclude:
            return PruneWrapper(copy)
        return RewindWrapper(copy)

    clone = keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    _copy_weights(model, clone, masked=False)
    for wrapper in find_rewind_wrappers(clone):
        wrapper.save_initial_weights()
    return clone


def strip(model):
    """Returns a plain Keras model without wrappers, with weights = weight * mask.

    The result has no tf_lottery objects in it: it saves, loads and converts like
    any Keras model, and gives the same predictions as `model`. The original
    model is not changed. A subclassed model is rebuilt from its config (it needs
    a working `get_config()`), with each `PruneWrapper(layer)` in its `__init__`
    replaced by the layer itself.

    Args:
        model: A Keras model containing `PruneWrapper` layers.

    Returns:
        A new, uncompiled Keras model.

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
    if keras_private.is_graph_model(model):
        clone = keras.models.clone_model(
            model,
            clone_function=lambda layer: fresh_copy(
                layer.layer if isinstance(layer, RewindWrapper) else layer
            ),
            recursive=True,
        )
    else:
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
