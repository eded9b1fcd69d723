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

import os
import warnings

import keras

from tf_lottery import keras_private
from tf_lottery.export import flatbuffer
from tf_lottery.export.convert import ExportError
from tf_lottery.export.convert import check_converter_available
from tf_lottery.export.convert import convert_saved
from tf_lottery.export.convert import converter_hint
from tf_lottery.export.convert import exportable
from tf_lottery.export.convert import keras_inputs
from tf_lottery.export.convert import saved_model
from tf_lottery.export.encoding import weights_by_name
from tf_lottery.export.encoding import pick_encoding
from tf_lottery.export.encoding import sparse_candidates
from tf_lottery.export.encoding import weight_names
from tf_lottery.export.litert import run_tflite
from tf_lottery.export.report import ExportReport
from tf_lottery.export.report import TensorEncoding
from tf_lottery.export.report import TFLiteReport
from tf_lottery.export.report import describe
from tf_lottery.export.report import inspect_tflite
from tf_lottery.export.samples import random_inputs
from tf_lottery.export.samples import take
from tf_lottery.export.verify import QUANTIZED
from tf_lottery.export.verify import check_file
from tf_lottery.export.verify import split_held_out
from tf_lottery.export.verify import quantization_or_pruning
from tf_lottery.files import write_atomically
from tf_lottery.structured.shrink import NothingToShrink
from tf_lottery.structured.shrink import ShrinkWarning
from tf_lottery.structured.shrink import shrink as shrink_model
from tf_lottery.structured.shrink import shrink_report
from tf_lottery.transforms import strip
from tf_lottery.validators import check_bool
from tf_lottery.validators import check_choice
from tf_lottery.validators import check_int
from tf_lottery.validators import check_number
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

# Default verification tolerances: max |error| as a fraction of max(1, largest
# |output|) for float files; the fraction of argmax agreement for quantized ones.
_TOLERANCE = {None: 1e-4, "float16": 1e-2, "dynamic": 0.95, "int8": 0.95}
# Calibration and verification use at most this many samples of
# representative_data, and this many random ones without it.
_MAX_SAMPLES = 1000
_RANDOM_SAMPLES = 300


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


def _check_arguments(model, path, quantize, tolerance, fallback, per_channel):
    check_choice(quantize, "quantize", QUANTIZE_MODES)
    check_bool(per_channel, "per_channel")
    check_choice(fallback, "fallback", ("dense", "error"))
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ValueError(f"Expected path to be a file path. Received: path={path!r}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"The folder of path does not exist. Received: path={os.fspath(path)!r}")
    if not isinstance(model, keras.Model):
        raise ValueError(f"Expected a Keras model. Received: model of type {type(model).__name__}")
    if tolerance is not None:
        check_number(tolerance, "tolerance")


def _check_options(shrink, batch_size, select_tf_ops, unpruned):
    check_bool(shrink, "shrink")
    check_bool(select_tf_ops, "select_tf_ops")
    check_int(
        batch_size, "batch_size", minimum=1, allow_none=True, meaning="the file's fixed batch size"
    )
    if unpruned is not None and not isinstance(unpruned, keras.Model):
        raise ValueError(
            "Expected unpruned to be the Keras model before pruning, or None. Received: "
            f"unpruned of type {type(unpruned).__name__}"
        )


def _both_encodings(name, plain, quantize, calibration, per_channel, select_tf_ops):
    """`((sparse bytes, notes), (dense bytes, notes))`, converted from one SavedModel.

    The dense file is converted first. Where none of its constants is sparse
    enough for the converter's sparsity pass (`sparse_candidates`: a shrunk
    model's, an unpruned one's), a sparse conversion would store every tensor as
    the dense one does, and is not run: the dense file serves as both. (Checked on
    the suite's exports and the CNN zoo: the two files held the same tensors; only
    the conversion metadata, and once one scalar constant left unshared, differed.)
    """

    def convert(source, sparse):
        return convert_saved(
            source, plain, quantize, sparse, calibration, per_channel, select_tf_ops
        )

    try:
        with saved_model(plain) as source:
            dense = convert(source, False)
            if not sparse_candidates(dense[0]):
                return dense, dense
            return convert(source, True), dense
    except Exception as error:
        raise ExportError(
            f"The TFLite converter failed on model '{name}': {error}" + converter_hint(error, plain)
        ) from error


def _verified(
    plain, content, checked, quantize, tolerance, calibration, per_channel, unpruned, note
):
    """The verification line for the file's outputs on `checked`, `note` added; an ExportError
    if they differ."""
    ok, verification = check_file(plain, *checked, content, quantize, tolerance)
    verification += note
    if ok:
        return verification
    cause = ""
    if quantize in QUANTIZED:
        cause = quantization_or_pruning(
            unpruned, quantize, calibration, checked, per_channel, plain
        )
    raise ExportError(
        f"The .tflite file does not match the Keras model: {verification}.{cause} "
        "No file was written. Check representative_data, or raise tolerance."
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
    _check_options(shrink, batch_size, select_tf_ops, unpruned)
    check_converter_available()
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
    plain, export_notes = exportable(plain, representative_data, batch_size)
    names = [t.name for t in plain.inputs]
    orders = {"the Keras model's order": names, "the .tflite file's (by name)": sorted(names)}
    data = take(
        representative_data, keras_inputs(plain), "representative_data", _MAX_SAMPLES, orders
    )
    calibration, held_out = split_held_out(data, quantize)
    (sparse, sparse_notes), (dense, dense_notes) = _both_encodings(
        model.name, plain, quantize, calibration, per_channel, select_tf_ops
    )
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
        content, outputs, notes = pick_encoding(plain, sparse, dense, inputs, quantize, fallback)
    notes = export_notes + notes
    verification = None
    if verify:
        checked = [x[held_out] for x in inputs], [o[held_out] for o in outputs]
        calibrated = ""
        if held_out != slice(None):
            total = len(inputs[0])
            calibrated = f"; calibrated on the other {len(calibration[0])} of {total} inputs"
        verification = _verified(
            plain,
            content,
            checked,
            quantize,
            tolerance,
            calibration,
            per_channel,
            unpruned,
            calibrated,
        )
    write_atomically(path, content)
    flat = flatbuffer.read(content)
    inspected = describe(
        flat, os.fspath(path), len(content), *weight_names(weights_by_name(plain), flat)
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
