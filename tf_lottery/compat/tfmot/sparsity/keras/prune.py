"""tfmot's entry points: `prune_low_magnitude`, `strip_pruning`, `prune_scope`."""

import keras

from tf_lottery import keras_private
from tf_lottery.compat.tfmot.sparsity.keras.pruning_wrapper import NOT_PRUNED
from tf_lottery.compat.tfmot.sparsity.keras.pruning_wrapper import PruneLowMagnitude
from tf_lottery.compat.tfmot.sparsity.keras.pruning_wrapper import prunes
from tf_lottery.transforms import strip
from tf_lottery.wrapper import find_wrappers

SUPPORTED = (
    "Dense, EinsumDense, Conv1D/2D/3D, Conv1D/2D/3DTranspose, SeparableConv1D/2D "
    "(pointwise kernel), Embedding, MultiHeadAttention, SimpleRNN, LSTM, GRU, layers "
    "with a get_prunable_weights() method (tfmot.sparsity.keras.PrunableLayer); kept "
    "dense: layers without weights, BatchNormalization, LayerNormalization, "
    "GroupNormalization, DepthwiseConv1D/2D"
)


def _is_kept(layer):
    """Whether tfmot's API leaves `layer` as it is: it has nothing to prune."""
    if isinstance(layer, (NOT_PRUNED, keras.layers.InputLayer, PruneLowMagnitude)):
        return True
    if layer.built:
        return not layer.trainable_weights
    # An unbuilt Keras layer may or may not get weights; a user layer without
    # get_prunable_weights() is refused, as tfmot refuses it.
    return type(layer).__module__.startswith("keras.")


def _wrap(layer, params):
    if isinstance(layer, keras.Operation) and not isinstance(layer, keras.layers.Layer):
        # An operator node of a Functional graph (`x + 1.0`): nothing to prune.
        return layer
    if not isinstance(layer, keras.layers.Layer):
        raise ValueError(
            "prune_low_magnitude expects Keras layers or a Sequential or Functional model. "
            f"Received: an object of type {type(layer).__name__}"
        )
    if prunes(layer) and not isinstance(layer, PruneLowMagnitude):
        return PruneLowMagnitude(layer, **params)
    if _is_kept(layer):
        return layer
    raise ValueError(
        f"prune_low_magnitude cannot prune layer '{layer.name}' of type "
        f"{type(layer).__name__}: it has weights, and tf_lottery does not know which of them "
        f"to prune. Supported layers: {SUPPORTED}. Give the layer a get_prunable_weights() "
        "method, or prune only the other layers with keras.models.clone_model(model, "
        "clone_function=...)."
    )


def prune_low_magnitude(
    to_prune,
    pruning_schedule=None,
    block_size=(1, 1),
    block_pooling_type="AVG",
    pruning_policy=None,
    sparsity_m_by_n=None,
    **kwargs,
):
    """tfmot's `prune_low_magnitude`: wraps a layer, a list of layers or a model.

    A Sequential or Functional model is copied with every layer that has
    weights to prune wrapped in a `PruneLowMagnitude` (its layers themselves are
    shared with `to_prune`, as in tfmot); layers with nothing to prune stay as
    they are. Train the result with `UpdatePruningStep()` among the callbacks.

    Args:
        to_prune: A layer, a list of layers, or a Sequential or Functional
            model.
        pruning_schedule: `ConstantSparsity` or `PolynomialDecay`. Defaults to
            `ConstantSparsity(0.5, 0)`.
        block_size: `(height, width)` blocks for 2-D weights. Defaults to
            `(1, 1)`.
        block_pooling_type: `"AVG"` or `"MAX"`. Defaults to `"AVG"`.
        pruning_policy: Not supported; raises a ValueError that says what to do
            instead.
        sparsity_m_by_n: `(m, n)`: m zeros in every n consecutive weights.
            Defaults to `None`.
        **kwargs: Base layer keyword arguments for a single layer's wrapper.

    Returns:
        The wrapped layer, list of layers, or a new (uncompiled) model.

    Example:

    ```python
    from tf_lottery.compat import tfmot

    schedule = tfmot.sparsity.keras.PolynomialDecay(0.5, 0.8, begin_step=0, end_step=1000)
    model = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    ```
    """
    if pruning_policy is not None:
        raise ValueError(
            "pruning_policy is not supported by tf_lottery.compat.tfmot. To choose the "
            "layers to prune, call prune_low_magnitude(layer) on them inside "
            "keras.models.clone_model(model, clone_function=...), or use "
            "tf_lottery.wrap(model, exclude=[...]). For what PruneForLatencyOnXNNPack is "
            "for, sparse kernels LiteRT runs fast, prune with "
            "tf_lottery.PruneFraction(block='tflite-float') and export with "
            f"tf_lottery.export_tflite. Received: pruning_policy={pruning_policy!r}"
        )
    params = {
        "pruning_schedule": pruning_schedule,
        "block_size": block_size,
        "block_pooling_type": block_pooling_type,
        "sparsity_m_by_n": sparsity_m_by_n,
    }
    if isinstance(to_prune, list):
        return [_wrap(layer, params) for layer in to_prune]
    if isinstance(to_prune, keras.Model):
        if not keras_private.is_graph_model(to_prune):
            raise ValueError(
                "prune_low_magnitude prunes Sequential and Functional models; for a "
                f"subclassed model ('{to_prune.name}', {type(to_prune).__name__}) wrap its "
                "layers in __init__: prune_low_magnitude(keras.layers.Dense(...))."
            )
        return keras.models.clone_model(
            to_prune, clone_function=lambda layer: _wrap(layer, params), recursive=True
        )
    if isinstance(to_prune, keras.layers.Layer) and prunes(to_prune):
        return PruneLowMagnitude(to_prune, **params, **kwargs)
    return _wrap(to_prune, params)


def strip_pruning(model):
    """tfmot's `strip_pruning`: a plain model whose weights are weight × mask.

    Args:
        model: A `keras.Model`.

    Returns:
        A new model without pruning wrappers, as `tf_lottery.strip` makes it.
        A model without wrappers comes back as a copy with the same layers.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"Expected model to be a keras.Model. Received: model of type {type(model).__name__}"
        )
    if not find_wrappers(model):
        return keras.models.clone_model(model, clone_function=lambda layer: layer)
    return strip(model)


def prune_scope():
    """tfmot's `prune_scope`: a custom-object scope with `PruneLowMagnitude`.

    tf_lottery's classes are registered with Keras, so `keras.models.load_model`
    needs no scope; this keeps code that opens one working.
    """
    return keras.saving.custom_object_scope({"PruneLowMagnitude": PruneLowMagnitude})
