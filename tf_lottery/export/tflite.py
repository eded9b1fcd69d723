"""TFLite export with sparse encoding, checked in LiteRT before it is written.

Facts this module is built on (TensorFlow 2.21 converter, ai-edge-litert 2.3,
checked again by `tests/test_tflite.py` and `benchmarks/tflite_bench.py`):

- `tf.lite.Optimize.EXPERIMENTAL_SPARSITY` stores a constant weight sparse only
  when it is at least 30% zeros.
- Only FULLY_CONNECTED has sparse kernels: float weights in 1x4 blocks and int8
  weights in 1x16 blocks along the input dimension of TFLite's [out, in] layout,
  i.e. `block=(4, 1)` or `(16, 1)` for a Keras Dense kernel. Any other sparse
  weight (unstructured, or a convolution) is stored as CSR with a DENSIFY op in
  front: a smaller file, but dense speed and dense memory once loaded.
- With int8 or dynamic-range quantization, LiteRT's default delegate (XNNPACK)
  refuses any sparse weight that is not a 1x16-block FULLY_CONNECTED one (CSR
  Dense kernels, every sparse convolution), at `allocate_tensors()` or at the
  first `invoke()`. Sparse dynamic-range weights in 1x16 blocks and block-sparse
  float16 weights load but compute NaN; int8 weights in partial 1x16 blocks
  compute wrong results. Only running the file tells, so `export_tflite` runs
  both encodings on the same inputs every time.
- A sparse encoding can be larger than the dense one (small tensors, CSR
  indices); the export writes the smaller.
"""

import contextlib
import functools
import importlib.util
import itertools
import warnings
import os
import re
import tempfile
from typing import NamedTuple

import keras
import numpy as np

from tf_lottery.export import flatbuffer
from tf_lottery.export import litert
from tf_lottery.export.capture import captured_output
from tf_lottery.files import write_atomically
from tf_lottery.export.litert import run_tflite
from tf_lottery.export.samples import ModelInput
from tf_lottery.export.samples import arrange
from tf_lottery.export.samples import random_inputs
from tf_lottery.export.samples import take
from tf_lottery.export.report import ExportReport
from tf_lottery.export.report import TensorEncoding
from tf_lottery.export.report import TFLiteReport
from tf_lottery.export.report import describe
from tf_lottery.export.report import inspect_tflite
from tf_lottery import keras_private
from tf_lottery.structured.shrink import NothingToShrink
from tf_lottery.structured.shrink import ShrinkWarning
from tf_lottery.structured.shrink import shrink as shrink_model
from tf_lottery.structured.shrink import shrink_report
from tf_lottery.transforms import strip
from tf_lottery.wrapper import find_wrappers

__all__ = [
    "QUANTIZE_MODES",
    "ExportError",
    "ExportReport",
    "TFLiteReport",
    "TensorEncoding",
    "export_tflite",
    "inspect_tflite",
    "run_tflite",
]

QUANTIZE_MODES = (None, "dynamic", "float16", "int8")
_QUANTIZED = ("int8", "dynamic")

# Default verification tolerances: max |error| as a fraction of max(1, largest
# |output|) for float files; the fraction of argmax agreement for quantized ones.
_TOLERANCE = {None: 1e-4, "float16": 1e-2, "dynamic": 0.95, "int8": 0.95}
# Quantized outputs that are not class scores, or too few inputs with a clear
# top class: the max |error| may be this fraction of max(1, largest |output|).
_QUANTIZED_VALUE_TOLERANCE = 0.1
# The sparse and the dense encoding hold the same quantized weights: beyond
# rounding, a difference is the runtime's fault.
_ENCODING_TOLERANCE = {None: 1e-4, "float16": 1e-2, "dynamic": 2e-2, "int8": 2e-2}
# Calibration and verification use at most this many samples of
# representative_data, and this many random ones without it.
_MAX_SAMPLES = 1000
_RANDOM_SAMPLES = 300
# int8 calibrates on representative_data; this share of it is held out of
# calibration and verified on, since a file is most right on what it calibrated on.
_HELD_OUT = 0.25
# Argmax agreement is judged on at least this many inputs with a clear top class
# (or half the inputs, when fewer are given); with fewer, on the values.
_MIN_CLEAR = 100

# What every conversion logs, saying nothing about the model at hand.
_CONVERTER_CHATTER = (
    "Ignored output_format",
    "Ignored drop_control_dependency",
    "Skipping runtime version metadata",
    "Statistics for quantized inputs were expected",
    "tf.lite.Interpreter is deprecated",
    "DeprecationWarning:",
    "FutureWarning:",
)
_WARNING_LINE = re.compile(
    r"^(?:[WEF]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] |WARNING:|ERROR:|\w*Warning: )"
)


class ExportError(ValueError):
    """The model could not be exported as asked; no file was written."""


def _keras_inputs(model):
    return [ModelInput(t.name, tuple(t.shape)) for t in model.inputs]


def _converter_notes(lines):
    """The converter's warnings and errors, less what every conversion says."""
    notes = []
    for line in lines:
        if _WARNING_LINE.match(line) and not any(c in line for c in _CONVERTER_CHATTER):
            notes.append("Converter: " + " ".join(_WARNING_LINE.sub("", line).split()))
    return notes


def _check_options(shrink, batch_size, select_tf_ops):
    for name, value in (("shrink", shrink), ("select_tf_ops", select_tf_ops)):
        if not isinstance(value, bool):
            raise ValueError(f"Expected {name} to be True or False. Received: {name}={value!r}")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(
            "Expected batch_size to be a positive integer (the file's fixed batch size) or "
            f"None. Received: batch_size={batch_size!r}"
        )


def _converter_hint(error, model):
    text = str(error)
    if any(layer.name.startswith("__") for layer in [model, *keras_private.flatten_layers(model)]):
        return (
            " TensorFlow cannot trace a layer or model whose name starts with '__' (Keras "
            "names an instance of a class `_Name` '__name'): give it another name=."
        )
    if "TensorList" in text or "Select TF ops" in text or "flex op" in text.lower():
        return (
            " An LSTM or GRU converts with a fixed batch size (batch_size=1), with "
            "unroll=True, or with select_tf_ops=True (the file then needs the Flex delegate)."
        )
    return ""


def _is_mixed(model):
    return any(
        layer.dtype_policy.compute_dtype != layer.dtype_policy.variable_dtype
        for layer in [model, *keras_private.flatten_layers(model)]
    )


def _in_float32(model):
    """A float32 copy of a mixed-precision graph model, same weights."""
    if not keras_private.is_graph_model(model):
        raise ExportError(
            f"Model '{model.name}' uses mixed precision (float16 compute), which TFLite's "
            "converter cannot take, and a subclassed model cannot be rebuilt in float32 "
            "here. Build it again under keras.mixed_precision.set_global_policy('float32'), "
            "load its weights, and export that."
        )

    def clone_function(layer):
        config = layer.get_config()
        if "dtype" in config:
            config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    for source, target in zip(model.weights, copy.weights):
        target.assign(keras.ops.cast(source.value, target.dtype))
    return copy


def _input_shapes(model, data):
    """The input shapes of a subclassed model: from its build, else from the data."""
    shape = (model.get_build_config() or {}).get("input_shape")
    if shape is not None:
        shapes = shape if isinstance(shape[0], (list, tuple)) else [shape]
        return [tuple(s) for s in shapes]
    if isinstance(data, np.ndarray):
        return [(None, *data.shape[1:])]
    raise ExportError(
        f"Model '{model.name}' is subclassed and its input shape is unknown. Call it once "
        "on a batch of real inputs (model(x)) before exporting, or pass "
        "representative_data=x."
    )


def _exportable(model, data, batch_size):
    """`model` as a float32 graph model with known inputs, and notes on what changed."""
    notes = []
    if _is_mixed(model):
        model = _in_float32(model)
        notes.append("Mixed-precision layers were exported in float32.")
    if keras_private.is_graph_model(model) and batch_size is None:
        return model, notes
    if keras_private.is_graph_model(model):
        specs = [(tuple(t.shape), t.dtype, t.name) for t in model.inputs]
    else:
        specs = [(shape, "float32", None) for shape in _input_shapes(model, data)]
    inputs = [
        keras.Input(batch_shape=(batch_size, *shape[1:]), dtype=dtype, name=name)
        for shape, dtype, name in specs
    ]
    inputs = inputs if len(inputs) > 1 else inputs[0]
    return keras.Model(inputs, model(inputs, training=False)), notes


def _shrunk(model, quantize):
    """`(model, ShrinkReport or None, notes)`: `model` without its dead units, if any.

    A model that `shrink` fails on is converted as it is, with a note: the
    unshrunk file computes the same.
    """
    if not keras_private.is_graph_model(model):
        return model, None, []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # Whole blocks of TFLite's sparse FULLY_CONNECTED kernels (1x4 float, 1x16 int8).
            small = shrink_model(model, align=16 if quantize in ("int8", "dynamic") else 4)
        except NothingToShrink:
            return model, None, []
        except Exception as error:  # noqa: BLE001 - any failure of shrink leaves the model as is
            return model, None, [f"shrink() failed, so the model was converted unshrunk: {error}"]
    notes = [str(w.message) for w in caught if issubclass(w.category, ShrinkWarning)]
    return small, shrink_report(model, small), notes


def _check_converter_available():
    """One line on what to do when TensorFlow's converter cannot run here."""
    if importlib.util.find_spec("tensorflow") is None:
        raise ExportError(
            "export_tflite converts with TensorFlow, which is not installed: "
            "pip install 'tf_lottery[export]'."
        )
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ExportError(
            "export_tflite converts with TensorFlow's converter, which needs the TensorFlow "
            f"backend; this process runs Keras on {backend!r}. Save the model "
            "(model.save('m.keras')) and convert it under TensorFlow: "
            "KERAS_BACKEND=tensorflow tf-lottery export m.keras m.tflite"
        )


def _convert(model, quantize, sparse, calibration, per_channel=True, select_tf_ops=False):
    """The .tflite bytes, and what the converter said that matters."""
    with _saved(model) as source:
        return _convert_saved(
            source, model, quantize, sparse, calibration, per_channel, select_tf_ops
        )


def _convert_saved(source, model, quantize, sparse, calibration, per_channel, select_tf_ops):
    """`_convert` from a `_saved(model)` source, so that one SavedModel serves several runs."""
    converter = source()
    _configure(converter, model, quantize, sparse, calibration, per_channel, select_tf_ops)
    with captured_output() as lines:
        content = converter.convert()
    return content, _converter_notes(lines)


def _input_dict(model):
    """The model's input structure when it takes a dict of inputs, else `None`."""
    # A Sequential takes no dict, and one never called (built from keras.Input,
    # or loaded) has no `input` of its own.
    if isinstance(model, keras.Sequential) or not isinstance(model.input, dict):
        return None
    return model.input


def _input_signature(model):
    """The `serve` signature of a graph model, as TensorFlow's own Keras 3 conversion makes it."""
    import tensorflow as tf

    if _input_dict(model) is not None:
        # from_keras_model traces dict inputs through tf_keras' helpers, which
        # fail on Keras 3 ("'NoneType' object is not callable"): by key instead.
        return [
            {
                key: tf.TensorSpec(tensor.shape, tensor.dtype, name=key)
                for key, tensor in model.input.items()
            }
        ]
    specs = [tf.TensorSpec(x.shape, x.dtype, name=x.name) for x in model.inputs]
    return [specs] if len(specs) > 1 else specs


@contextlib.contextmanager
def _saved(model):
    """Yields a function that returns a fresh TFLite converter for `model`.

    A graph model is written to one temporary SavedModel, as
    `TFLiteConverter.from_keras_model` does for Keras 3 on every `convert()`,
    so that the sparse and the dense conversion of an export read the same
    file: writing it is most of a conversion's time. A subclassed model is
    handed to `from_keras_model`, which traces it from its call.
    """
    import tensorflow as tf

    if not keras_private.is_graph_model(model):
        yield lambda: tf.lite.TFLiteConverter.from_keras_model(model)
        return
    with tempfile.TemporaryDirectory() as folder:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            "serve",
            functools.partial(model.__call__, training=False),
            input_signature=_input_signature(model),
        )
        with captured_output():
            archive.write_out(folder, verbose=False)
        yield lambda: tf.lite.TFLiteConverter.from_saved_model(folder)


def _configure(converter, model, quantize, sparse, calibration, per_channel, select_tf_ops):
    import tensorflow as tf

    if select_tf_ops:
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS,
            tf.lite.OpsSet.SELECT_TF_OPS,
        ]
    optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY] if sparse else []
    if quantize is not None:
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        names = [t.name for t in model.inputs]
        samples = [x.astype(t.dtype) for x, t in zip(calibration, model.inputs)]
        # By name: a list would be matched to the file's inputs in its own order.
        converter.representative_dataset = lambda: (
            {name: x[i : i + 1] for name, x in zip(names, samples)} for i in range(len(samples[0]))
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter._experimental_disable_per_channel_quantization_for_dense_layers = not per_channel
    converter.optimizations = optimizations


def _keras_outputs(model, inputs, batch_size=256):
    batches = []
    for start in range(0, len(inputs[0]), batch_size):
        batch = [x[start : start + batch_size] for x in inputs]
        if _input_dict(model) is not None:
            batch = keras.tree.pack_sequence_as(_input_dict(model), batch)
        elif len(batch) == 1:
            batch = batch[0]
        outputs = model(batch, training=False)
        batches.append([keras.ops.convert_to_numpy(o) for o in keras.tree.flatten(outputs)])
    return [np.concatenate(parts) for parts in zip(*batches)]


def _run_file(content, model, inputs):
    """The file's outputs on the Keras model's inputs, in the model's output order.

    Raises:
        LiteRTError: LiteRT could not load or run the file.
    """
    interpreter = litert.load(content)
    details, _ = litert.signature(interpreter)
    # The converter names the file's inputs after the Keras inputs, but sorts them.
    names = [t.name for t in model.inputs]
    if {d["name"] for d in details} == set(names):
        inputs = dict(zip(names, inputs))
    return litert.run(interpreter, arrange(inputs, litert.model_inputs(details), "inputs"))


def _outputs_or_problem(content, model, inputs):
    """`(outputs, None)` from `_run_file`, or `(None, what LiteRT said)`."""
    try:
        return _run_file(content, model, inputs), None
    except litert.LiteRTError as error:
        return None, str(error)


def _by_output(model, lines):
    """Joins one line per output (`None`: nothing to say), naming outputs when several."""
    names = getattr(model, "output_names", None) or [
        f"output_{i}" for i in range(len(model.outputs))
    ]
    if len(names) > 1:
        lines = [line and f"{name}: {line}" for name, line in zip(names, lines)]
    return "; ".join(line for line in lines if line) or None


def _difference(sparse, dense, quantize):
    """How one output of the sparse encoding is wrong, or `None`."""
    if not np.all(np.isfinite(sparse)):
        return "its outputs are not finite (NaN or inf) while the dense encoding's are"
    allowed = _ENCODING_TOLERANCE[quantize] * max(1.0, float(np.max(np.abs(dense))))
    difference = float(np.max(np.abs(sparse - dense)))
    if difference > allowed:
        return (
            f"its outputs differ from the dense encoding's by up to {difference:.3g} "
            f"(allowed {allowed:.2g}) on {len(dense)} inputs"
        )
    return None


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


def _keras_weights(model):
    """`{"layer/weight": _KerasWeight}` for each Keras weight of 2 or more dimensions."""
    weights = {}
    normalizations = _normalizations(model)
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            weights.update(_keras_weights(layer))
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


def _weight_names(keras_weights, model):
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


def _pick_encoding(plain, sparse, dense, inputs, quantize, fallback):
    """Runs both encodings on `inputs` and picks the one to write.

    Returns:
        `(content, its outputs, notes)`.

    Raises:
        ExportError: Neither encoding can be used (or the sparse one cannot and
            `fallback="error"`).
    """
    dense_outputs, dense_problem = _outputs_or_problem(dense, plain, inputs)
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
    sparse_outputs, problem = _outputs_or_problem(sparse, plain, inputs)
    if problem is None and dense_problem is None:
        problem = _by_output(
            plain,
            [_difference(s, d, quantize) for s, d in zip(sparse_outputs, dense_outputs)],
        )
    if problem is None:
        notes = []
        if dense_problem is not None:
            notes.append(f"The dense encoding, run for comparison, failed: {dense_problem}.")
        return sparse, sparse_outputs, notes
    flat = flatbuffer.read(sparse)
    weights = _keras_weights(plain)
    report = describe(flat, None, len(sparse), *_weight_names(weights, flat))
    message = _refusal(report, quantize, problem, weights)
    if fallback == "error":
        raise ExportError(message + " No file was written.")
    if dense_problem is not None:
        raise ExportError(
            f"{message} The dense encoding fails too: {dense_problem}. No file was written."
        )
    return dense, dense_outputs, [message + " Wrote the dense encoding instead."]


def _compare(expected, got, quantize, tolerance, step):
    """`(ok, line)`: one output of the file against Keras'.

    Quantized class scores are judged by argmax agreement on the inputs whose
    top class is clear: Keras' best two scores further apart than 1% of the
    output range and, for int8 outputs, two quantization steps. With too few
    of those, and for every other output, by max |error|.
    """
    count = len(expected)
    if not np.all(np.isfinite(got)):
        return False, f"outputs not finite (NaN or inf) on {count} inputs"
    value_tolerance = _QUANTIZED_VALUE_TOLERANCE if quantize in _QUANTIZED else tolerance
    suffix = ""
    if quantize in _QUANTIZED and expected.ndim == 2 and expected.shape[1] > 1:
        top2 = np.sort(expected, axis=1)[:, -2:]
        margin = max(0.01 * (float(np.ptp(expected)) or 1.0), 2 * step)
        clear = top2[:, 1] - top2[:, 0] > margin
        agree = expected.argmax(1) == got.argmax(1)
        if clear.sum() >= max(1, min(_MIN_CLEAR, count // 2)):
            agreement = float(np.mean(agree[clear]))
            return agreement >= tolerance, (
                f"argmax agrees on {agreement:.1%} of the {int(clear.sum())} of {count} inputs "
                f"with a clear top class (margin over {margin:.2g}; tolerance {tolerance:.0%}; "
                f"{float(np.mean(agree)):.1%} of all)"
            )
        suffix = (
            f"; only {int(clear.sum())} of {count} inputs have a clear top class (margin over "
            f"{margin:.2g}), too few to judge by argmax ({float(np.mean(agree)):.1%} agree)"
        )
    scale = max(1.0, float(np.max(np.abs(expected))))
    error = float(np.max(np.abs(expected - got)))
    line = f"max |error| {error:.2e} on {count} inputs (tolerance {value_tolerance * scale:.1e})"
    return error <= value_tolerance * scale, line + suffix


def _verify(plain, inputs, outputs, content, quantize, tolerance):
    """`(ok, line)`: the file's outputs on `inputs` against the Keras model's."""
    expected = _keras_outputs(plain, inputs)
    steps = flatbuffer.output_steps(flatbuffer.read(content))
    results = [
        _compare(e, g, quantize, tolerance, step) for e, g, step in zip(expected, outputs, steps)
    ]
    return all(ok for ok, _ in results), _by_output(plain, [line for _, line in results])


def _held_out(data, quantize):
    """`(calibration inputs, slice of the inputs to verify on)`.

    For int8 the last `_HELD_OUT` of `data` is left out of calibration and the
    file is verified on it alone; otherwise every input serves both.
    """
    if quantize != "int8" or data is None or len(data[0]) < 2:
        return data, slice(None)
    cut = len(data[0]) - max(1, round(_HELD_OUT * len(data[0])))
    return [x[:cut] for x in data], slice(cut, None)


def _argmax_agreement(expected, got):
    """The share of inputs whose top class the file gets right, over all class outputs."""
    shares = [
        float(np.mean(e.argmax(1) == g.argmax(1)))
        for e, g in zip(expected, got)
        if e.ndim == 2 and e.shape[1] > 1
    ]
    return min(shares) if shares else None


# The unpruned model's quantized file agreeing within this many points of the
# pruned one's says that the loss is quantization's.
_SAME_LOSS = 0.05


def _quantization_or_pruning(unpruned, quantize, calibration, checked, per_channel, plain):
    """A sentence for a failed quantized verification: quantization's loss, or pruning's."""
    inputs, outputs = checked
    pruned = _argmax_agreement(_keras_outputs(plain, inputs), outputs)
    if unpruned is None or pruned is None:
        return (
            " The Keras model compared against is the pruned one, so this is the loss of "
            "quantization; pass unpruned=<the model before pruning> to see whether its own "
            "quantized file loses as much."
        )
    reference = strip(unpruned) if find_wrappers(unpruned) else unpruned
    content, _ = _convert(reference, quantize, False, calibration, per_channel)
    got, problem = _outputs_or_problem(content, reference, inputs)
    if problem is not None:
        return f" The unpruned model's {quantize} file could not be run: {problem}."
    agreement = _argmax_agreement(_keras_outputs(reference, inputs), got)
    line = (
        f" The unpruned model's {quantize} file agrees with its Keras model on {agreement:.1%} "
        f"of these inputs, this one on {pruned:.1%}: "
    )
    if agreement <= pruned + _SAME_LOSS:
        return line + "the loss comes from quantization, not from pruning."
    return line + "pruning made the model harder to quantize."


def _check_arguments(model, path, quantize, tolerance, fallback, per_channel):
    if quantize not in QUANTIZE_MODES:
        raise ValueError(
            f"Expected quantize to be one of {QUANTIZE_MODES}. Received: quantize={quantize!r}"
        )
    if not isinstance(per_channel, bool):
        raise ValueError(
            f"Expected per_channel to be True or False. Received: per_channel={per_channel!r}"
        )
    if fallback not in ("dense", "error"):
        raise ValueError(f"Expected fallback='dense' or 'error'. Received: fallback={fallback!r}")
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ValueError(f"Expected path to be a file path. Received: path={path!r}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"The folder of path does not exist. Received: path={os.fspath(path)!r}")
    if not isinstance(model, keras.Model):
        raise ValueError(f"Expected a Keras model. Received: model of type {type(model).__name__}")
    if tolerance is not None and (
        isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance < 0
    ):
        raise ValueError(
            f"Expected tolerance to be a non-negative number. Received: tolerance={tolerance!r}"
        )


def export_tflite(
    model,
    path,
    *,
    quantize=None,
    representative_data=None,
    verify=True,
    tolerance=None,
    fallback="dense",
    per_channel=True,
    shrink=True,
    batch_size=None,
    select_tf_ops=False,
    unpruned=None,
):
    """Converts a pruned model to a .tflite file with sparse encoding.

    With `shrink=True` (the default) units that pruning left dead (whole neurons
    and filters, e.g. from `tf_lottery.UnitNorm`) are first removed with
    `tf_lottery.shrink`, which gives a smaller *dense* model that is faster on
    every runtime; the report's `shrink` says what went. Models `shrink` cannot
    read (subclassed ones) are converted as they are.

    The model (wrapped or already stripped) is converted twice, with and
    without TFLite's sparse encoding. Both files are run in LiteRT with its
    default delegate on the same inputs, at the file's own batch size; the
    sparse one is kept if it is smaller, runs, and computes what the dense one
    computes. The kept file is then compared with the Keras model and only
    then written, atomically: a failure leaves no file behind and never
    overwrites a good one. Models with any number of inputs and outputs work.

    Only Dense layers pruned in blocks run faster: prune them with
    `block="tflite-float"` ((4, 1) blocks) for float files or
    `block="tflite-int8"` ((16, 1)) for int8 files. Other sparse weights make the
    file smaller but are densified at load time, which the report says.

    Nothing is printed: what the converter warns about goes into the report's
    notes.

    Args:
        model: A Keras model, with or without `PruneWrapper` layers.
        path: Where to write the .tflite file.
        quantize: `None` (float32), `"dynamic"` (int8 weights, float
            activations), `"float16"` or `"int8"` (full integer; needs
            `representative_data`). Defaults to `None`.
        representative_data: A few hundred real inputs: an array (one-input
            models), a dict of arrays by input name, a list of arrays in the
            model's input order (refused where that differs from the file's
            order, by name, which `run_tflite` takes: pass a dict), or a
            `tf.data.Dataset` of such batches or of `(x, y)` batches. At most
            the first 1,000 samples are used: to calibrate int8, and to run
            the files on. Without it, the files run on 300 random inputs.
            Defaults to `None`.
        verify: Compare the file's outputs with Keras' on those inputs: max
            absolute error for float and float16; for dynamic and int8, argmax
            agreement on the inputs with a clear top class (or max error when
            fewer than 100 of them, or half, have one). A mismatch beyond
            `tolerance` raises `ExportError`. The two encodings are run and
            compared whatever this says. With `quantize="int8"` the last quarter
            of the inputs is left out of calibration and verified on alone:
            a file is most right on what it was calibrated on. Defaults to `True`.
        tolerance: Override of the verification tolerance: the allowed max error
            as a fraction of max(1, largest |output|) (float: `1e-4`, float16:
            `1e-2`) or the minimum argmax agreement over inputs with a clear top
            class (int8, dynamic: `0.95`; quantized outputs judged on values may
            be off by 10%). Defaults to `None`.
        fallback: What to do when LiteRT cannot load or run the sparse file, or
            it computes something else than the dense one: `"dense"` writes the
            dense encoding instead and says why in the report; `"error"` raises
            `ExportError` naming the Keras weights and the fix. Defaults to
            `"dense"`.
        per_channel: Quantize Dense kernels with one scale per output channel
            (TensorFlow's default). `False` uses one scale per tensor, which saves
            12 bytes per output channel of each kernel and its bias: about 9 KB of
            LeNet-300-100's 35 KB int8 file at 93% sparsity, at no accuracy cost
            there. Only matters with `quantize="int8"` or `"dynamic"`. Defaults
            to `True`.
        shrink: Remove dead units before converting. Defaults to `True`.
        batch_size: Fix the batch dimension of the file's inputs, e.g. `1`.
            An `LSTM` or `GRU` (not unrolled) converts only with a fixed batch
            size or `select_tf_ops`. Defaults to `None` (any batch size).
        select_tf_ops: Let the converter keep TensorFlow ops that TFLite lacks.
            The file then needs the Flex delegate (TensorFlow's select ops) at
            run time, which LiteRT's Python package does not ship: it cannot be
            verified here, and the report says so. Defaults to `False`.
        unpruned: Optionally, the model before pruning (same inputs and
            outputs). When a quantized file fails verification, the unpruned
            model is converted the same way and checked on the same inputs, and
            the error says whether the loss comes from quantization (the
            unpruned file agrees about as little) or from pruning. Defaults to
            `None`.

    Returns:
        An `ExportReport`; `print()` it for sizes, the Keras weight behind each
        tensor and its encoding, and what was checked on how many inputs.

    Example:

    ```python
    report = tf_lottery.export_tflite(model, "lenet.tflite", quantize="int8",
                                      representative_data=x_train[:300])
    print(report)
    ```
    """
    _check_arguments(model, path, quantize, tolerance, fallback, per_channel)
    _check_options(shrink, batch_size, select_tf_ops)
    if unpruned is not None and not isinstance(unpruned, keras.Model):
        raise ValueError(
            "Expected unpruned to be the Keras model before pruning, or None. Received: "
            f"unpruned of type {type(unpruned).__name__}"
        )
    _check_converter_available()
    if quantize == "int8" and representative_data is None:
        raise ValueError(
            "quantize='int8' needs representative_data: a few hundred real inputs to "
            "calibrate activation ranges, e.g. representative_data=x_train[:300]."
        )
    if tolerance is None:
        tolerance = _TOLERANCE[quantize]
    plain = strip(model) if find_wrappers(model) else model
    shrunk, shrink_notes = None, []
    if shrink:
        plain, shrunk, shrink_notes = _shrunk(plain, quantize)
    plain, export_notes = _exportable(plain, representative_data, batch_size)
    names = [t.name for t in plain.inputs]
    orders = {"the Keras model's order": names, "the .tflite file's (by name)": sorted(names)}
    data = take(
        representative_data, _keras_inputs(plain), "representative_data", _MAX_SAMPLES, orders
    )
    calibration, held_out = _held_out(data, quantize)
    try:
        with _saved(plain) as source:
            sparse, sparse_notes = _convert_saved(
                source, plain, quantize, True, calibration, per_channel, select_tf_ops
            )
            dense, dense_notes = _convert_saved(
                source, plain, quantize, False, calibration, per_channel, select_tf_ops
            )
    except Exception as error:
        raise ExportError(
            f"The TFLite converter failed on model '{model.name}': {error}"
            + _converter_hint(error, plain)
        ) from error
    inputs = data if data is not None else random_inputs(plain, _RANDOM_SAMPLES)
    if select_tf_ops:
        # LiteRT's Python package has no Flex delegate: the file cannot run here.
        content, outputs = dense, None
        notes = [
            "select_tf_ops: the file may contain TensorFlow ops and then needs the Flex "
            "delegate at run time; it was not loaded, compared or verified here. The dense "
            "encoding was written."
        ]
        verify = False
    else:
        content, outputs, notes = _pick_encoding(plain, sparse, dense, inputs, quantize, fallback)
    notes = export_notes + notes
    verification = None
    if verify:
        checked = [x[held_out] for x in inputs], [o[held_out] for o in outputs]
        ok, verification = _verify(plain, *checked, content, quantize, tolerance)
        if held_out != slice(None):
            total = len(inputs[0])
            verification += f"; calibrated on the other {len(calibration[0])} of {total} inputs"
        if not ok:
            cause = ""
            if quantize in _QUANTIZED:
                cause = _quantization_or_pruning(
                    unpruned, quantize, calibration, checked, per_channel, plain
                )
            raise ExportError(
                f"The .tflite file does not match the Keras model: {verification}.{cause} "
                "No file was written. Check representative_data, or raise tolerance."
            )
    write_atomically(path, content)
    flat = flatbuffer.read(content)
    inspected = describe(
        flat, os.fspath(path), len(content), *_weight_names(_keras_weights(plain), flat)
    )
    return ExportReport(
        path=inspected.path,
        size=inspected.size,
        ops=inspected.ops,
        tensors=inspected.tensors,
        quantize=quantize,
        dense_size=len(dense),
        delegate_ok=not select_tf_ops,
        verification=verification,
        notes=list(dict.fromkeys(sparse_notes + dense_notes)) + notes + shrink_notes,
        shrink=shrunk,
    )
