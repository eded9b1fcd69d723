"""Which layers tf_lottery prunes, and which of their weights.

One table from Keras layer class to the names of its pruned variables, in the
manner of tfmot's prune_registry. A layer of your own joins by defining
`get_prunable_weights()`.
"""

import keras

from tf_lottery import keras_private

# Names of the variables that are pruned, per layer class. Biases and
# normalization parameters are never pruned.
_PRUNABLE_NAMES = (
    (keras.layers.Dense, ("kernel",)),
    (keras.layers.EinsumDense, ("kernel",)),
    (keras.layers.Conv1D, ("kernel",)),
    (keras.layers.Conv2D, ("kernel",)),
    (keras.layers.Conv3D, ("kernel",)),
    (keras.layers.Conv1DTranspose, ("kernel",)),
    (keras.layers.Conv2DTranspose, ("kernel",)),
    (keras.layers.Conv3DTranspose, ("kernel",)),
    (keras.layers.DepthwiseConv1D, ("kernel",)),
    (keras.layers.DepthwiseConv2D, ("kernel",)),
    (keras.layers.SeparableConv1D, ("depthwise_kernel", "pointwise_kernel")),
    (keras.layers.SeparableConv2D, ("depthwise_kernel", "pointwise_kernel")),
    (keras.layers.Embedding, ("embeddings",)),
    # Sub-layers' kernels: the query, key, value and output projections.
    (keras.layers.MultiHeadAttention, ("kernel",)),
    (keras.layers.GroupQueryAttention, ("kernel",)),
    (keras.layers.SimpleRNN, ("kernel", "recurrent_kernel")),
    (keras.layers.LSTM, ("kernel", "recurrent_kernel")),
    (keras.layers.GRU, ("kernel", "recurrent_kernel")),
)


# Layers whose output units (kernel columns, bias entries) can be pruned whole.
UNIT_LAYERS = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
)


def has_unit_axis(layer):
    """Whether `layer`'s output units can be pruned whole (Dense, convolutions)."""
    return isinstance(layer, UNIT_LAYERS)


def is_prunable(layer):
    """Returns whether `layer` has weights that tf_lottery knows how to prune.

    A layer is prunable if it is one of the supported Keras layers (Dense,
    EinsumDense, the convolutions, Embedding, MultiHeadAttention,
    GroupQueryAttention, SimpleRNN, LSTM, GRU) or defines `get_prunable_weights()`.
    """
    if hasattr(layer, "get_prunable_weights"):
        return True
    return any(isinstance(layer, cls) for cls, _ in _PRUNABLE_NAMES)


def prunable_weights(layer):
    """Returns the list of variables of a built `layer` that are pruned."""
    if hasattr(layer, "get_prunable_weights"):
        return list(layer.get_prunable_weights())
    for cls, names in _PRUNABLE_NAMES:
        if isinstance(layer, cls):
            # All weights, not trainable_weights: a frozen layer's kernel is still
            # a prunable weight, counted by `sparsity`.
            return [w for w in layer.weights if w.name in names]
    return []


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
