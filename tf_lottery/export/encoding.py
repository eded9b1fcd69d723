"""Which encoding to write, sparse or dense, and what to do when LiteRT fails on the sparse one.

Both encodings are run on the same inputs (`pick_encoding`); a sparse file that
LiteRT refuses or computes wrong is explained weight by weight, which needs each
tensor of the file matched to the Keras weight it holds (`weight_names`).
"""

import itertools
from typing import NamedTuple

import keras
import numpy as np

from tf_lottery.export import flatbuffer
from tf_lottery.export.convert import ExportError
from tf_lottery.export.report import describe
from tf_lottery.export.verify import by_output
from tf_lottery.export.verify import encoding_difference
from tf_lottery.export.verify import outputs_or_problem


class _KerasWeight(NamedTuple):
    layer: str
    layer_type: str
    value: np.ndarray
    # The BatchNormalization right after the layer, which the converter may fold in.
    normalized_by: str | None = None


def _normalizations(model):
    """`{layer name: name of the BatchNormalization that takes its output}`."""
    found = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        for node in getattr(layer, "_inbound_nodes", []):
            for parent in node.parent_nodes:
                found[parent.operation.name] = layer.name
    return found


def weights_by_name(model):
    """`{"layer/weight": _KerasWeight}` for each Keras weight of 2 or more dimensions."""
    weights = {}
    normalizations = _normalizations(model)
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            weights.update(weights_by_name(layer))
            continue
        for variable in layer.weights:
            if len(variable.shape) >= 2:
                value = keras.ops.convert_to_numpy(variable)
                weights[f"{layer.name}/{variable.name}"] = _KerasWeight(
                    layer.name, type(layer).__name__, value, normalizations.get(layer.name)
                )
    return weights


def _layouts(value, shape):
    """`value` in every axis order that has `shape` (TFLite's layouts: Dense [out, in],
    Conv2D [out, h, w, in], DepthwiseConv2D [1, h, w, channels], ...)."""
    for order in itertools.permutations(range(value.ndim)):
        yield np.transpose(value, order).reshape(shape)


def _scaled_per_channel(layout, values, precision):
    """Whether `values` is `layout` times one factor per output channel: a folded
    BatchNormalization (the channel is the first axis, or the last for depthwise)."""
    alive = layout != 0
    if not alive.any() or np.any(np.abs(values[~alive]) > precision[~alive]):
        return False
    for axis in dict.fromkeys((0, values.ndim - 1)):
        others = tuple(i for i in range(values.ndim) if i != axis)
        # Least squares, so that the largest weights, the least rounded, decide. The
        # factor is estimated from rounded values: allow a whole rounding step.
        squares = np.sum(layout * layout, axis=others, keepdims=True)
        scale = np.sum(values * layout, axis=others, keepdims=True) / np.maximum(squares, 1e-30)
        if np.all(np.abs(values - layout * scale) <= 2 * precision + 1e-4 * np.abs(values)):
            return True
    return False


def weight_names(keras_weights, model):
    """Maps each constant weight tensor of a read file to the Keras weight it holds.

    The converter names tensors after neighbouring ops (`model/re_lu/Relu` for a
    kernel), so tensors are matched by value: a weight in some axis order,
    within the tensor's precision (half a quantization step for int8). A kernel
    whose BatchNormalization the converter folded in matches where its values
    are the Keras kernel's times one factor per output channel, its pruned
    weights zero.

    Returns:
        `(names, folded)`: `{tensor index: "layer/weight"}` for the tensors that
        matched, and `{tensor index: BatchNormalization layer name}` for those
        with a normalization folded in.
    """
    names, folded = {}, {}
    candidates = []
    for index, tensor, data in flatbuffer.constant_weights(model):
        values, precision = flatbuffer.dense_values(tensor, data)
        precision = np.broadcast_to(precision, values.shape)
        slack = float(np.sum(precision))
        for name, weight in keras_weights.items():
            value = weight.value
            if value.size != values.size or value.ndim > 4 or name in names.values():
                continue
            if abs(float(np.sum(np.abs(value))) - float(np.sum(np.abs(values)))) > slack:
                continue
            if any(np.all(np.abs(v - values) <= precision) for v in _layouts(value, values.shape)):
                names[index] = name
                break
        else:
            candidates.append((index, values, precision))
    for index, values, precision in candidates:
        for name, weight in keras_weights.items():
            value = weight.value
            if weight.normalized_by is None or name in names.values():
                continue
            if value.size != values.size or value.ndim > 4:
                continue
            layouts = _layouts(value, values.shape)
            if any(_scaled_per_channel(v, values, precision) for v in layouts):
                names[index], folded[index] = name, weight.normalized_by
                break
    return names, folded


def _in_whole_int8_blocks(kernel):
    """Whether a Dense kernel ([in, out]) is pruned in whole 16x1 blocks."""
    rows = kernel.shape[0] - kernel.shape[0] % 16
    if rows == 0 or np.any(kernel[rows:]):
        return False
    kept = kernel[:rows].reshape(rows // 16, 16, -1) != 0
    return bool(np.all(kept.all(axis=1) | ~kept.any(axis=1)))


def _layers(tensors, keras_weights):
    """The Keras layers of `tensors`, e.g. `"conv1 (Conv2D), conv2 (Conv2D)"`."""
    names = []
    for t in tensors:
        weight = keras_weights.get(t.weight)
        names.append(f"{weight.layer} ({weight.layer_type})" if weight else t.label)
    return ", ".join(dict.fromkeys(names))


def _advice(quantize, sparse, keras_weights):
    """What makes a sparse file usable, given the weights it stores sparse."""
    if quantize is None:
        return "keep the dense encoding (fallback='dense'); LiteRT fails on this sparse file"
    if quantize == "float16":
        return (
            "LiteRT computes NaN with block-sparse float16 weights: keep the dense float16 "
            "encoding (fallback='dense'), or export with quantize=None, whose 4x1 blocks run sparse"
        )
    kernels = [
        t
        for t in sparse
        if t.weight in keras_weights and keras_weights[t.weight].layer_type == "Dense"
    ]
    unblocked = [t for t in kernels if not _in_whole_int8_blocks(keras_weights[t.weight].value)]
    others = [t for t in sparse if t not in kernels]
    fixes = []
    if quantize == "dynamic":
        fixes.append(
            "LiteRT runs no sparse dynamic-range file right (weights in 1x16 blocks give NaN, "
            "other sparse weights are refused): keep the dense encoding (fallback='dense'), "
            "or export with quantize='int8'"
        )
    if unblocked:
        fixes.append(
            f"prune layer {_layers(unblocked, keras_weights)} with block='tflite-int8' (whole "
            "16x1 blocks: LiteRT refuses other sparse int8 weights and computes wrong results "
            "on partial blocks)"
        )
    if others:
        fixes.append(
            f"LiteRT has no sparse int8 kernel for layer {_layers(others, keras_weights)}: "
            "prune it to under 30% zeros (then it is stored dense), or export with quantize=None"
        )
    return "; ".join(fixes) or (
        "keep the dense encoding (fallback='dense'): LiteRT fails on this file although its "
        "Dense layers are pruned in whole 16x1 blocks"
    )


def _refusal(report, quantize, problem, keras_weights):
    sparse = [t for t in report.tensors if t.encoding != "dense"]
    listed = ", ".join(f"{t.label} [{'x'.join(map(str, t.shape))}]" for t in sparse)
    return (
        f"LiteRT cannot use the sparse quantize={quantize!r} file: {problem}. Sparse weights: "
        f"{listed}. Fix: {_advice(quantize, sparse, keras_weights)}."
    )


# The converter's sparsity pass (TensorFlow's DenseToSparse, MLIR) keeps every
# constant below 30% zeros dense: `kMinSparsityLevel = 0.3`, judged on the values
# as stored, after quantization. With a margin: for a file with no constant this
# sparse, the sparse conversion stores the same tensors, and is not run.
_SPARSE_CANDIDATE_ZEROS = 0.25


def sparse_candidates(content):
    """Whether any constant of the dense file `content` is sparse enough for the
    converter's sparsity pass to store it sparse (at least 25% zeros as stored).

    Integer constants (PAD's paddings, shapes) count too, unlike in
    `flatbuffer.constant_weights`: the skip was checked with them counted.
    """
    model = flatbuffer.read(content)
    for tensor in model.subgraphs[0].tensors:
        data = model.buffers[tensor.buffer].data
        if data is None or tensor.shape is None or len(tensor.shape) < 2:
            continue
        values = flatbuffer.dense_values(tensor, data)[0]
        if values.size and np.mean(values == 0) >= _SPARSE_CANDIDATE_ZEROS:
            return True
    return False


def pick_encoding(plain, sparse, dense, inputs, quantize, fallback):
    """Runs both encodings on `inputs` and picks the one to write.

    Returns:
        `(content, its outputs, notes)`.

    Raises:
        ExportError: Neither encoding can be used (or the sparse one cannot and
            `fallback="error"`).
    """
    dense_outputs, dense_problem = outputs_or_problem(dense, plain, inputs)
    if sparse == dense or len(sparse) >= len(dense):
        if dense_problem is not None:
            raise ExportError(f"LiteRT cannot use the file: {dense_problem}. No file was written.")
        notes = []
        if sparse != dense:
            notes.append(
                f"The sparse encoding ({len(sparse):,} bytes) is not smaller than the dense "
                f"one ({len(dense):,} bytes): wrote the dense one."
            )
        return dense, dense_outputs, notes
    sparse_outputs, problem = outputs_or_problem(sparse, plain, inputs)
    if problem is None and dense_problem is None:
        problem = by_output(
            plain,
            [encoding_difference(s, d, quantize) for s, d in zip(sparse_outputs, dense_outputs)],
        )
    if problem is None:
        notes = []
        if dense_problem is not None:
            notes.append(f"The dense encoding, run for comparison, failed: {dense_problem}.")
        return sparse, sparse_outputs, notes
    flat = flatbuffer.read(sparse)
    weights = weights_by_name(plain)
    report = describe(flat, None, len(sparse), *weight_names(weights, flat))
    message = _refusal(report, quantize, problem, weights)
    if fallback == "error":
        raise ExportError(message + " No file was written.")
    if dense_problem is not None:
        raise ExportError(
            f"{message} The dense encoding fails too: {dense_problem}. No file was written."
        )
    return dense, dense_outputs, [message + " Wrote the dense encoding instead."]
