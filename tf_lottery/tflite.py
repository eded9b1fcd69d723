"""TFLite export with sparse encoding, verification in LiteRT, and inspection.

Facts this module is built on (TensorFlow 2.21 converter, ai-edge-litert 2.3,
checked again by `tests/test_tflite.py` and `benchmarks/tflite_bench.py`):

- `tf.lite.Optimize.EXPERIMENTAL_SPARSITY` stores a constant weight sparse only
  when it is at least 30% zeros.
- Only FULLY_CONNECTED has sparse kernels: float weights in 1x4 blocks and int8
  weights in 1x16 blocks along the input dimension of TFLite's [out, in] layout,
  i.e. `block=(4, 1)` or `(16, 1)` for a Keras Dense kernel. Any other sparse
  weight (unstructured, or a convolution) is stored as CSR with a DENSIFY op in
  front: a smaller file, but dense speed and dense memory once loaded.
- int8 or dynamic-range quantization combined with unstructured (or 1x4) sparsity
  can give a file that LiteRT's default delegate (XNNPACK) refuses at
  `allocate_tensors()`. Only loading it tells, so `export_tflite` always does.

TensorFlow's own `tf.lite.Interpreter` is being retired: files are loaded and run
with LiteRT (`ai-edge-litert`), the runtime that ships on devices.
"""

import contextlib
import dataclasses
import io
import os

import keras
import numpy as np
from absl import logging as absl_logging

from tf_lottery.files import write_atomically
from tf_lottery.transforms import strip
from tf_lottery.wrapper import find_wrappers

QUANTIZE_MODES = (None, "dynamic", "float16", "int8")

# Default verification tolerances: max |error| as a fraction of max(1, largest
# |output|) for float files; the fraction of argmax agreement for quantized ones.
_TOLERANCE = {None: 1e-4, "float16": 1e-2, "dynamic": 0.95, "int8": 0.95}
# Quantized models whose output is not a vector of class scores have no argmax
# to agree on: their max |error| may be this fraction of max(1, largest |output|).
_QUANTIZED_VALUE_TOLERANCE = 0.1

_ITEMSIZE = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 9: 1, 10: 8, 16: 4}
_NUMPY_TYPE = {
    0: np.float32,
    1: np.float16,
    2: np.int32,
    3: np.uint8,
    4: np.int64,
    7: np.int16,
    9: np.int8,
}
_TYPE_NAME = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 7: "int16", 9: "int8"}


class ExportError(ValueError):
    """The model could not be exported as asked; no file was written."""


def _litert_interpreter():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as error:
        raise ImportError(
            "Loading .tflite files needs LiteRT: pip install ai-edge-litert "
            "(or pip install 'tf_lottery[export]')."
        ) from error
    return Interpreter


def _schema():
    from tensorflow.lite.python import schema_py_generated

    return schema_py_generated


@dataclasses.dataclass(frozen=True)
class TensorEncoding:
    """How one constant weight tensor is stored in a .tflite file.

    Attributes:
        name: Tensor name in the file.
        op: The op that reads it (after any DENSIFY), e.g. `"FULLY_CONNECTED"`.
        shape: Dense shape in TFLite's layout ([out, in] for FULLY_CONNECTED).
        dtype: Element type, e.g. `"float32"` or `"int8"`.
        encoding: `"dense"`, `"random-sparse"` (CSR of single weights) or
            `"block-sparse"`.
        block: Block shape in TFLite's layout, e.g. `(1, 4)`; `None` unless
            block-sparse.
        sparsity: Fraction of zeros (for sparse tensors: of values not stored).
        densified: Whether a DENSIFY op turns it back into a dense tensor at load
            time (a smaller file, no speed-up).
        nbytes: Bytes of its buffer in the file.
    """

    name: str
    op: str
    shape: tuple
    dtype: str
    encoding: str
    block: tuple | None
    sparsity: float
    densified: bool
    nbytes: int


@dataclasses.dataclass
class TFLiteReport:
    """What a .tflite file holds: its size, its ops and how each weight is stored.

    Prints as a table. `ExportReport` adds what the export measured.

    Attributes:
        path: The file, or `None` for bytes that were not written.
        size: File size in bytes.
        ops: Count of each op type in the main subgraph.
        tensors: One `TensorEncoding` per constant weight tensor of 2 or more
            dimensions.
    """

    path: str | None
    size: int
    ops: dict
    tensors: list

    @property
    def densified_ops(self):
        """Names of the ops that read a weight through a DENSIFY op."""
        return sorted({t.op for t in self.tensors if t.densified})

    def _rows(self):
        width = max([len(_short(t.name)) for t in self.tensors] + [6])
        lines = [
            f"{'tensor':<{width}}  {'op':<17} {'shape':<12} {'type':<7} {'encoding':<13} "
            f"{'block':<6} {'sparsity':>8}  {'bytes':>10}"
        ]
        for t in self.tensors:
            block = "x".join(map(str, t.block)) if t.block else "-"
            encoding = t.encoding + (" *" if t.densified else "")
            shape = "x".join(map(str, t.shape))
            lines.append(
                f"{_short(t.name):<{width}}  {t.op:<17} {shape:<12} {t.dtype:<7} {encoding:<13} "
                f"{block:<6} {t.sparsity:>8.1%}  {t.nbytes:>10,}"
            )
        if any(t.densified for t in self.tensors):
            lines.append(
                "* stored sparse but DENSIFY'd at load time: smaller file, dense speed and memory"
            )
        return lines

    def __str__(self):
        head = f"{self.path or '<bytes>'}: {self.size:,} bytes"
        return "\n".join([head, *self._rows()])


@dataclasses.dataclass
class ExportReport(TFLiteReport):
    """The result of `export_tflite`: the file's contents and what was checked.

    Attributes:
        quantize: The quantization mode used.
        dense_size: Size in bytes of the same model exported without sparse
            encoding, for comparison.
        delegate_ok: Whether LiteRT's default delegate accepted the file.
        verification: A short line with the comparison against Keras, or `None`
            if `verify=False`.
        notes: Anything the user should know (fallbacks, skipped checks).
    """

    quantize: str | None = None
    dense_size: int = 0
    delegate_ok: bool = False
    verification: str | None = None
    notes: list = dataclasses.field(default_factory=list)

    def __str__(self):
        ratio = self.dense_size / self.size if self.size else float("nan")
        lines = [
            f"{self.path}: {self.size:,} bytes; the dense export is {self.dense_size:,} bytes "
            f"({ratio:.1f}x); quantize={self.quantize}",
            *self._rows(),
            "LiteRT default delegate: " + ("accepted" if self.delegate_ok else "REFUSED"),
        ]
        if self.verification:
            lines.append(f"Verified against Keras: {self.verification}")
        lines.extend(f"Note: {note}" for note in self.notes)
        return "\n".join(lines)


def _short(name, limit=40):
    name = name.split(";")[0]
    return name if len(name) <= limit else "..." + name[-(limit - 3) :]


def _op_names(model):
    schema = _schema()
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return [
        names.get(max(code.builtinCode, code.deprecatedBuiltinCode), str(code.builtinCode))
        for code in model.operatorCodes
    ]


def _read_flatbuffer(content):
    schema = _schema()
    model = schema.Model.GetRootAsModel(content, 0)
    return schema.ModelT.InitFromObj(model)


def inspect_tflite(path_or_bytes):
    """Reads a .tflite file and reports how each weight tensor is stored.

    Works on any .tflite file, including ones made by TensorFlow's converter
    without tf_lottery: it reads the flatbuffer itself.

    Args:
        path_or_bytes: A file path, or the file's bytes.

    Returns:
        A `TFLiteReport`; `print()` it for the table.

    Example:

    ```python
    print(tf_lottery.inspect_tflite("lenet.tflite"))
    ```
    """
    if isinstance(path_or_bytes, (bytes, bytearray)):
        path, content = None, bytes(path_or_bytes)
    else:
        path = os.fspath(path_or_bytes)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No such .tflite file: {path}")
        with open(path, "rb") as file:
            content = file.read()
    try:
        model = _read_flatbuffer(content)
        subgraph = model.subgraphs[0]
    except Exception as error:  # the flatbuffer reader raises many kinds
        raise ValueError(
            f"{path or 'The bytes given'} is not a valid .tflite file ({type(error).__name__}: {error})."
        ) from error
    op_names = _op_names(model)
    ops, consumers, densify = {}, {}, {}
    for op in subgraph.operators:
        name = op_names[op.opcodeIndex]
        ops[name] = ops.get(name, 0) + 1
        for index in op.inputs if op.inputs is not None else []:
            consumers.setdefault(int(index), name)
        if name == "DENSIFY":
            densify[int(op.outputs[0])] = int(op.inputs[0])
    densified = {source: consumers.get(out, "?") for out, source in densify.items()}
    tensors = []
    for index, tensor in enumerate(subgraph.tensors):
        buffer = model.buffers[tensor.buffer]
        data = buffer.data
        if data is None or tensor.shape is None or len(tensor.shape) < 2:
            continue
        shape = tuple(int(d) for d in tensor.shape)
        total = int(np.prod(shape))
        itemsize = _ITEMSIZE.get(tensor.type, 1)
        block = None
        if tensor.sparsity is not None:
            stored = len(data) // itemsize
            sparsity = 1.0 - stored / total
            block_map = (
                list(tensor.sparsity.blockMap) if tensor.sparsity.blockMap is not None else []
            )
            if block_map:
                sizes = [1] * len(shape)
                for i, dim in enumerate(block_map):
                    sizes[int(dim)] = int(tensor.sparsity.dimMetadata[len(shape) + i].denseSize)
                block = tuple(sizes)
            encoding = "block-sparse" if block else "random-sparse"
        else:
            values = np.frombuffer(bytes(data), dtype=_NUMPY_TYPE.get(tensor.type, np.uint8))
            sparsity = float(np.mean(values == 0)) if values.size else 0.0
            encoding = "dense"
        tensors.append(
            TensorEncoding(
                name=tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name),
                op=densified.get(index, consumers.get(index, "?")),
                shape=shape,
                dtype=_TYPE_NAME.get(tensor.type, str(tensor.type)),
                encoding=encoding,
                block=block,
                sparsity=sparsity,
                densified=index in densified,
                nbytes=len(data),
            )
        )
    return TFLiteReport(path=path, size=len(content), ops=ops, tensors=tensors)


def _as_array(representative_data, argument="representative_data"):
    if representative_data is None:
        return None
    if hasattr(representative_data, "as_numpy_iterator"):  # a tf.data.Dataset
        batches = []
        for item in representative_data.as_numpy_iterator():
            batches.append(item[0] if isinstance(item, tuple) else item)
            if sum(len(b) for b in batches) >= 256:
                break
        representative_data = np.concatenate(batches)
    array = np.asarray(representative_data)
    if array.ndim < 1 or len(array) == 0:
        raise ValueError(
            f"Expected {argument} to be an array of model inputs with a batch "
            f"dimension, e.g. x_train[:200]. Received: {argument} of shape {array.shape}"
        )
    return array


def _convert(model, quantize, sparse, calibration, per_channel=True):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY] if sparse else []
    if quantize is not None:
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        samples = calibration.astype(model.inputs[0].dtype)
        converter.representative_dataset = lambda: (
            [samples[i : i + 1]] for i in range(len(samples))
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter._experimental_disable_per_channel_quantization_for_dense_layers = not per_channel
    converter.optimizations = optimizations
    # Keras 3 prints a description of the SavedModel it exports on the way, and
    # TensorFlow logs every step at INFO once absl logging is set up.
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return converter.convert()
    finally:
        absl_logging.set_verbosity(verbosity)


def _load(content):
    """Loads the file with the default delegate; returns (interpreter, error)."""
    interpreter = _litert_interpreter()(model_content=content, num_threads=1)
    try:
        interpreter.allocate_tensors()
    except RuntimeError as error:
        return None, str(error).strip().splitlines()[0]
    return interpreter, None


def _run(interpreter, x):
    (inputs,) = interpreter.get_input_details()
    (outputs,) = interpreter.get_output_details()
    interpreter.resize_tensor_input(inputs["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inputs["index"], x.astype(inputs["dtype"]))
    interpreter.invoke()
    return interpreter.get_tensor(outputs["index"])


def run_tflite(path_or_bytes, x, *, num_threads=1):
    """Runs a .tflite file in LiteRT with its default delegate on a batch.

    Args:
        path_or_bytes: A .tflite file path, or its bytes.
        x: The input batch, a numpy array (one-input models).
        num_threads: LiteRT threads. Defaults to `1`.

    Returns:
        The output batch as a numpy array.

    Example:

    ```python
    logits = tf_lottery.run_tflite("lenet.tflite", x_test)
    accuracy = (logits.argmax(1) == y_test).mean()
    ```
    """
    interpreter_class = _litert_interpreter()
    if isinstance(path_or_bytes, (bytes, bytearray)):
        interpreter = interpreter_class(model_content=bytes(path_or_bytes), num_threads=num_threads)
    else:
        interpreter = interpreter_class(
            model_path=os.fspath(path_or_bytes), num_threads=num_threads
        )
    return _run(interpreter, np.asarray(x))


def _verification_batch(model, data):
    if data is not None:
        return data[:32]
    shape = [8 if d is None else d for d in model.inputs[0].shape]
    if "int" in str(model.inputs[0].dtype):
        return np.zeros(shape, dtype=model.inputs[0].dtype)
    return np.random.default_rng(0).normal(size=shape).astype("float32")


def _verify(model, interpreter, data, quantize, tolerance):
    x = _verification_batch(model, data)
    expected = np.asarray(model(x, training=False))
    got = _run(interpreter, x)
    if quantize in ("int8", "dynamic") and expected.ndim == 2 and expected.shape[1] > 1:
        # Inputs whose two best Keras scores are closer than 1% of the output
        # range can flip under any quantization; they say nothing about the file.
        top2 = np.sort(expected, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 0.01 * (np.ptp(expected) or 1.0)
        agree = expected.argmax(1) == got.argmax(1)
        agreement = float(np.mean(agree[clear])) if clear.any() else 1.0
        line = (
            f"argmax agrees on {agreement:.1%} of the {int(clear.sum())} of {len(x)} inputs "
            f"with a clear top class (tolerance {tolerance:.0%}; {float(np.mean(agree)):.1%} of all)"
        )
        return agreement >= tolerance, line
    scale = max(1.0, float(np.max(np.abs(expected))))
    error = float(np.max(np.abs(expected - got)))
    if quantize in ("int8", "dynamic"):
        tolerance = _QUANTIZED_VALUE_TOLERANCE
    line = f"max |error| {error:.2e} on {len(x)} inputs (tolerance {tolerance * scale:.1e})"
    return error <= tolerance * scale, line


def _single_io(model):
    return len(model.inputs) == 1 and len(model.outputs) == 1


def _compare_with_dense(model, interpreter, dense, data, quantize):
    """Runs the sparse and the dense encoding on one batch; a line if they differ.

    Both hold the same (quantized) weights, so any difference beyond rounding is
    the runtime's sparse kernel going wrong, not quantization error.
    """
    x = _verification_batch(model, data)
    sparse_out = _run(interpreter, x)
    dense_interpreter, refusal = _load(dense)
    if refusal is not None:
        return None
    dense_out = _run(dense_interpreter, x)
    scale = max(1.0, float(np.max(np.abs(dense_out))))
    allowed = (2e-2 if quantize in ("int8", "dynamic") else _TOLERANCE[quantize]) * scale
    if not np.all(np.isfinite(sparse_out)):
        return "its outputs are not finite (NaN or inf) while the dense encoding's are"
    difference = float(np.max(np.abs(sparse_out - dense_out)))
    if difference > allowed:
        return (
            f"its outputs differ from the dense encoding's by up to {difference:.3g} "
            f"(allowed {allowed:.2g})"
        )
    return None


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
):
    """Converts a pruned model to a .tflite file with sparse encoding.

    The model (wrapped or already stripped) is converted with TFLite's sparse
    encoding, loaded in LiteRT with its default delegate, optionally compared
    with the Keras model, and only then written, atomically: a failure leaves no
    file behind and never overwrites a good one.

    Only Dense layers pruned in blocks run faster: prune them with
    `block="tflite-float"` ((4, 1) blocks) for float files or
    `block="tflite-int8"` ((16, 1)) for int8 files. Other sparse weights make the
    file smaller but are densified at load time, which the report says.

    Args:
        model: A Keras model, with or without `PruneWrapper` layers.
        path: Where to write the .tflite file.
        quantize: `None` (float32), `"dynamic"` (int8 weights, float
            activations), `"float16"` or `"int8"` (full integer; needs
            `representative_data`). Defaults to `None`.
        representative_data: An array of a few hundred real inputs (or a
            `tf.data.Dataset` of (x, y) batches): calibration for int8, and the
            verification batch. Without it, verification uses random inputs.
            Defaults to `None`.
        verify: Compare LiteRT's outputs with Keras' on a batch: max absolute
            error for float and float16, argmax agreement for dynamic and int8.
            A mismatch beyond `tolerance` raises `ExportError`. Loading with the
            default delegate is checked whatever this says. Defaults to `True`.
        tolerance: Override of the verification tolerance: the allowed max error
            as a fraction of max(1, largest |output|) (float: `1e-4`, float16:
            `1e-2`) or the minimum argmax agreement over inputs with a clear top
            class (int8, dynamic: `0.95`; a quantized model without class scores
            is held to a max error of 10%). Defaults to `None`.
        fallback: What to do when the default delegate refuses the sparse file
            (int8 or dynamic with weights not in 1x16 blocks): `"dense"` writes the
            dense encoding instead and says so in the report; `"error"` raises
            `ExportError` naming the layers and the fix. Defaults to `"dense"`.
        per_channel: Quantize Dense kernels with one scale per output channel
            (TensorFlow's default). `False` uses one scale per tensor, which saves
            12 bytes per output channel of each kernel and its bias: about 9 KB of
            LeNet-300-100's 35 KB int8 file at 93% sparsity, at no accuracy cost
            there. Only matters with `quantize="int8"` or `"dynamic"`. Defaults
            to `True`.

    Returns:
        An `ExportReport`; `print()` it for sizes and per-tensor encodings.

    Example:

    ```python
    report = tf_lottery.export_tflite(model, "lenet.tflite", quantize="int8",
                                      representative_data=x_train[:300])
    print(report)
    ```
    """
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
    data = _as_array(representative_data)
    if quantize == "int8" and data is None:
        raise ValueError(
            "quantize='int8' needs representative_data: a few hundred real inputs to "
            "calibrate activation ranges, e.g. representative_data=x_train[:300]."
        )
    if tolerance is None:
        tolerance = _TOLERANCE[quantize]
    elif isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance < 0:
        raise ValueError(
            f"Expected tolerance to be a non-negative number. Received: tolerance={tolerance!r}"
        )
    plain = strip(model) if find_wrappers(model) else model
    notes = []
    try:
        content = _convert(plain, quantize, True, data, per_channel)
        dense = _convert(plain, quantize, False, data, per_channel)
    except Exception as error:
        raise ExportError(
            f"The TFLite converter failed on model '{model.name}': {error}"
        ) from error
    interpreter, problem = _load(content)
    if problem is None and content != dense and _single_io(plain):
        problem = _compare_with_dense(plain, interpreter, dense, data, quantize)
    if problem is not None:
        sparse = [
            f"{_short(t.name)} [{'x'.join(map(str, t.shape))}]"
            for t in inspect_tflite(content).tensors
            if t.encoding != "dense"
        ]
        if quantize == "float16":
            fix = "export float16 without sparse encoding (the fallback) or use quantize=None"
        else:
            fix = (
                "prune Dense layers with block='tflite-int8' (whole 16x1 blocks; LiteRT "
                "computes wrong int8 results on partial blocks), or export with quantize=None"
            )
        message = (
            f"LiteRT cannot use the sparse quantize={quantize!r} file: {problem}. Sparse "
            f"weights: {sparse}. Fix: {fix}."
        )
        if fallback == "error":
            raise ExportError(message + " No file was written.")
        notes.append(message + " Wrote the dense encoding instead.")
        content = dense
        interpreter, refusal = _load(content)
        if refusal is not None:
            raise ExportError(f"LiteRT's default delegate refuses even the dense file: {refusal}")
    verification = None
    if verify:
        if not _single_io(plain):
            notes.append("Verification skipped: it supports models with one input and one output.")
        else:
            ok, verification = _verify(plain, interpreter, data, quantize, tolerance)
            if not ok:
                raise ExportError(
                    f"The .tflite file does not match the Keras model: {verification}. "
                    "No file was written. Check representative_data, or raise tolerance."
                )
    write_atomically(path, content)
    inspected = inspect_tflite(path)
    return ExportReport(
        path=os.fspath(path),
        size=inspected.size,
        ops=inspected.ops,
        tensors=inspected.tensors,
        quantize=quantize,
        dense_size=len(dense),
        delegate_ok=True,
        verification=verification,
        notes=notes,
    )
