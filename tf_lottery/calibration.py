"""Calibration for one-shot pruning: the inputs that Dense and EinsumDense layers see.

Wanda and SparseGPT score a layer's weights with statistics of its inputs on a
few calibration batches: the squared norm of every input feature, or the Gram
matrix XᵀX. This module finds the input (contraction) axes of a kernel, hooks a
layer's `call` for the duration of a forward pass, as Keras' GPTQ does
(`keras/src/quantizers/gptq_core.py`, `stream_hessians`), and folds each batch
into those statistics at once, so that no activation outlives its batch.

Keras' GPTQ guesses the layout of a 3-D EinsumDense kernel from its largest
axis; here the equation says it. A Gemma-style query kernel of shape
(4, 64, 16) with `"btd,ndh->btnh"` contracts its 64-wide axis: 64 inputs and
4 · 16 outputs, where the guess would read 256 × 16.

Padding: a batch may carry weights for its positions, from the `"padding_mask"`
entry of a dict input (KerasHub's convention) or the sample weights of an
`(x, y, sample_weight)` batch. Every layer input whose leading axes start with
the weights' shape gets them, row by row, so padded positions (weight 0) do not
count; a layer input of another shape (after pooling, say) counts every row.
"""

import math
from typing import NamedTuple

import keras
import numpy as np

from tf_lottery import keras_private
from tf_lottery.gradients import no_gradients
from tf_lottery.registry import einsum_input_axes


class KernelLayout(NamedTuple):
    """How a Dense or EinsumDense kernel reads as an [inputs, outputs] matrix.

    Attributes:
        kernel_axes: The kernel's axes in matrix order: the contracted (input)
            axes first, then the output axes, each in the kernel's order.
        inputs: How many of `kernel_axes` are input axes.
        input_spec: The layer input's axis letters, `"..."` standing for any
            number of leading axes; `None` for Dense (the last axis is the input).
        contracted: The input letters, in matrix order.
    """

    kernel_axes: tuple
    inputs: int
    input_spec: str | None
    contracted: str

    def matrix_shape(self, kernel_shape):
        shape = [kernel_shape[a] for a in self.kernel_axes]
        return math.prod(shape[: self.inputs]), math.prod(shape[self.inputs :])


def einsum_layout(equation):
    """The `KernelLayout` of an EinsumDense `equation` such as `"btd,ndh->btnh"`.

    The input axes of the kernel are those `registry.einsum_input_axes` gives
    (the letters it shares with the layer's input but not with the output), in
    the kernel's order, as `NMSparsity` groups them; its output axes are those
    it shares with the output only.

    Raises:
        ValueError: If the kernel has an axis that is in both the input and the
            output (a batched kernel, one matrix per slice) or in neither, or
            no contracted axis.
    """
    operands, output = equation.replace(" ", "").split("->")
    source, kernel = operands.split(",")
    inputs = einsum_input_axes(equation)
    outputs = tuple(
        i for i, a in enumerate(kernel) if a in output.replace("...", "") and a not in source
    )
    if len(inputs) + len(outputs) != len(kernel) or not inputs:
        raise ValueError(
            f"One-shot pruning reads an EinsumDense kernel as one [inputs, outputs] "
            f"matrix, but the kernel of {equation!r} has axes that are neither contracted "
            "nor outputs (or none contracted). Leave this layer out of the pruned layers."
        )
    contracted = "".join(kernel[i] for i in inputs)
    return KernelLayout(inputs + outputs, len(inputs), source, contracted)


def kernel_layout(layer):
    """The `KernelLayout` of a Dense or EinsumDense `layer`."""
    if isinstance(layer, keras.layers.EinsumDense):
        return einsum_layout(layer.equation)
    return KernelLayout((0, 1), 1, None, "")


def to_matrix(kernel, layout):
    """The [inputs, outputs] matrix of a kernel array (numpy)."""
    shape = layout.matrix_shape(kernel.shape)
    return np.transpose(kernel, layout.kernel_axes).reshape(shape)


def from_matrix(matrix, layout, kernel_shape):
    """The kernel array of shape `kernel_shape` whose matrix is `matrix` (numpy)."""
    ordered = [kernel_shape[a] for a in layout.kernel_axes]
    return np.transpose(matrix.reshape(ordered), np.argsort(layout.kernel_axes))


def _input_rows(x, layout):
    """`x` as a (rows, inputs) tensor, and the shape of its row axes."""
    rank = len(x.shape)
    if layout.input_spec is None:
        row_axes, input_axes = list(range(rank - 1)), [rank - 1]
    else:
        left, _, right = layout.input_spec.partition("...")
        if "..." not in layout.input_spec:
            left, right = layout.input_spec, ""
        position = {a: i for i, a in enumerate(left)}
        position.update({a: rank - len(right) + i for i, a in enumerate(right)})
        input_axes = [position[a] for a in layout.contracted]
        row_axes = [i for i in range(rank) if i not in input_axes]
    shape = tuple(x.shape)
    rows = keras.ops.reshape(
        keras.ops.transpose(x, row_axes + input_axes),
        (-1, math.prod(shape[i] for i in input_axes)),
    )
    return rows, tuple(shape[i] for i in row_axes)


class InputStatistics:
    """Running sums over the weighted rows of a layer's inputs.

    Sums rather than the references' running means; `hessian` gives
    SparseGPT's scale, which its handling of dead inputs depends on.

    Args:
        inputs: The number of input features.
        gram: Whether to keep the Gram matrix XᵀX (SparseGPT), or only its
            diagonal, the squared norms (Wanda).
    """

    def __init__(self, inputs, gram):
        self.gram = gram
        self.sum = np.zeros((inputs, inputs) if gram else (inputs,), np.float64)
        self.rows = 0.0
        self.examples = 0

    def add(self, rows, weights, examples):
        """Adds a batch: `rows` (n, inputs) tensor, `weights` (n,) numpy or `None`,
        from `examples` examples (the size of the batch axis)."""
        self.examples += examples
        rows = keras.ops.cast(rows, "float32")
        if weights is not None:
            rows = keras.ops.multiply(rows, keras.ops.sqrt(weights.astype("float32"))[:, None])
            self.rows += float(weights.sum())
        else:
            self.rows += rows.shape[0]
        if self.gram:
            # Per batch in float32 on the device, as the references do; summed
            # over batches in float64.
            part = keras.ops.matmul(keras.ops.transpose(rows), rows)
        else:
            part = keras.ops.sum(keras.ops.square(rows), axis=0)
        self.sum += keras.ops.convert_to_numpy(part).astype(np.float64)

    @property
    def hessian(self):
        """SparseGPT's H: 2/N · XᵀX, with N the examples (sequences) seen.

        The scale matters where an input is dead: SparseGPT sets its diagonal
        to 1 before dampening by the mean diagonal.
        """
        return self.sum * (2.0 / max(self.examples, 1))

    @property
    def squared_norms(self):
        """‖X_j‖² of every input feature j."""
        return np.diag(self.sum).copy() if self.gram else self.sum


class _Hook:
    """Feeds one layer's inputs to its statistics while installed."""

    def __init__(self, layer, statistics):
        self.layer = layer
        self.layout = kernel_layout(layer)
        self.statistics = statistics
        self.weights = None  # the current batch's position weights

    def __call__(self, original):
        def call(*args, **kwargs):
            inputs = args[0] if args else kwargs["inputs"]
            rows, row_shape = _input_rows(inputs, self.layout)
            weights = self.weights
            if weights is not None:
                if tuple(row_shape[: weights.ndim]) == weights.shape:
                    weights = np.broadcast_to(
                        weights.reshape(weights.shape + (1,) * (len(row_shape) - weights.ndim)),
                        row_shape,
                    ).reshape(-1)
                else:
                    weights = None
            for statistics in self.statistics:
                statistics.add(rows, weights, int(inputs.shape[0]))
            return original(*args, **kwargs)

        return call


def collect(model, batches, layers, gram):
    """Input statistics of `layers` over the calibration `batches`, in one pass.

    Each layer's `call` is hooked for the pass and restored afterwards, also on
    an error. A layer called several times (shared) counts every call.

    Args:
        model: The model to run, eagerly, in inference mode.
        batches: `CalibrationBatch`es.
        layers: Dense or EinsumDense layers of `model`.
        gram: Whether to keep Gram matrices (see `InputStatistics`).

    Returns:
        One `InputStatistics` per layer, in order.
    """
    hooks, statistics = {}, []
    for layer in layers:
        rows, _ = kernel_layout(layer).matrix_shape(layer.kernel.shape)
        statistics.append(InputStatistics(rows, gram))
        hooks.setdefault(id(layer), _Hook(layer, [])).statistics.append(statistics[-1])
    installed = []
    try:
        for hook in hooks.values():
            had_own = "call" in vars(hook.layer)
            installed.append((hook.layer, had_own, hook.layer.call))
            hook.layer.call = hook(hook.layer.call)
        with no_gradients():
            for batch in batches:
                for hook in hooks.values():
                    hook.weights = batch.weights
                model(batch.inputs, training=False)
    finally:
        for layer, had_own, original in installed:
            if had_own:
                layer.call = original
            else:
                del layer.call
    return statistics


class CalibrationBatch(NamedTuple):
    """Model inputs, and weights for their positions (`None`: all count)."""

    inputs: object
    weights: np.ndarray | None


def _to_numpy(value):
    if isinstance(value, dict):
        return {k: _to_numpy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_numpy(v) for v in value]
    return np.asarray(keras.ops.convert_to_numpy(value))


def _first(value, count):
    if isinstance(value, dict):
        return {k: _first(v, count) for k, v in value.items()}
    if isinstance(value, list):
        return [_first(v, count) for v in value]
    return value[:count]


def _size(value):
    if isinstance(value, dict):
        return _size(next(iter(value.values())))
    if isinstance(value, list):
        return _size(value[0])
    return len(value)


def _batch(x, sample_weight, name):
    weights = None
    if isinstance(x, dict) and "padding_mask" in x:
        weights = x["padding_mask"]
    elif sample_weight is not None:
        weights = sample_weight
    if weights is not None:
        weights = np.asarray(weights, np.float64)
        if np.any(weights < 0) or not np.all(np.isfinite(weights)):
            raise ValueError(
                f"{name} weighs calibration positions by the padding mask or sample "
                "weights, which must be finite and non-negative."
            )
    return CalibrationBatch(x, weights)


def _is_arrays(value):
    if isinstance(value, dict):
        return all(_is_arrays(v) for v in value.values())
    if isinstance(value, list):
        return bool(value) and all(_is_arrays(v) for v in value)
    return hasattr(value, "shape") and hasattr(value, "dtype")


def calibration_batches(data, samples, batch_size, name):
    """The calibration data as a list of `CalibrationBatch`es of numpy inputs.

    Only model inputs are kept, never activations: a few hundred sequences of
    token ids are small, and every layer group reads them again.

    Args:
        data: Inputs (an array, a list of arrays or a dict of them, as
            `model.predict` takes), an `(x,)`, `(x, y)` or `(x, y,
            sample_weight)` tuple of them, or a dataset (any iterable, e.g.
            a `tf.data.Dataset`) of such batches.
        samples: How many examples to take, at most.
        batch_size: Examples per forward pass, for arrays.
        name: The criterion's name, for messages.
    """
    if isinstance(data, tuple):
        x, _, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    else:
        x, sample_weight = data, None
    if _is_arrays(x):
        x = _to_numpy(x)
        if sample_weight is not None:
            sample_weight = np.asarray(keras.ops.convert_to_numpy(sample_weight))
        total = min(samples, _size(x))
        return [
            _batch(
                {k: v[start : start + batch_size] for k, v in x.items()}
                if isinstance(x, dict)
                else [v[start : start + batch_size] for v in x]
                if isinstance(x, list)
                else x[start : start + batch_size],
                None if sample_weight is None else sample_weight[start : start + batch_size],
                name,
            )
            for start in range(0, total, batch_size)
        ]
    if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise ValueError(
            f"Expected data to be calibration inputs: arrays, a dict of arrays, an (x, y) "
            f"tuple or a dataset of batches. Received: data of type {type(data).__name__}"
        )
    batches, taken = [], 0
    for element in data:
        if isinstance(element, tuple):
            x, _, sample_weight = keras.utils.unpack_x_y_sample_weight(element)
        else:
            x, sample_weight = element, None
        x = _to_numpy(x)
        count = min(_size(x), samples - taken)
        if sample_weight is not None:
            sample_weight = np.asarray(keras.ops.convert_to_numpy(sample_weight))[:count]
        batches.append(_batch(_first(x, count), sample_weight, name))
        taken += count
        if taken >= samples:
            break
    if not batches:
        raise ValueError(f"{name} found no batch in data={data!r}.")
    return batches


def kernel_owner(wrapper, variable):
    """The Dense or EinsumDense layer inside `wrapper` whose kernel is `variable`, or `None`."""
    for layer in [wrapper.layer, *keras_private.flatten_layers(wrapper.layer)]:
        if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)) and any(
            w is variable for w in layer.weights
        ):
            return layer if variable.name == "kernel" else None
    return None
