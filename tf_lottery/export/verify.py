"""Running a .tflite file in LiteRT and judging its outputs against the Keras model's.

Float files are judged by max |error|, quantized class scores by argmax agreement
on the inputs whose top class is clear; the sparse encoding is judged against
the dense one, which holds the same weights.
"""

import keras
import numpy as np

from tf_lottery.export import flatbuffer
from tf_lottery.export import litert
from tf_lottery.export.convert import convert
from tf_lottery.export.convert import input_dict
from tf_lottery.export.samples import arrange
from tf_lottery.transforms import strip
from tf_lottery.wrapper import find_wrappers

# int8 and dynamic-range quantization: outputs judged by argmax where they are class scores.
QUANTIZED = ("int8", "dynamic")

# Quantized outputs that are not class scores, or too few inputs with a clear
# top class: the max |error| may be this fraction of max(1, largest |output|).
_QUANTIZED_VALUE_TOLERANCE = 0.1


# The sparse and the dense encoding hold the same quantized weights: beyond
# rounding, a difference is the runtime's fault.
_ENCODING_TOLERANCE = {None: 1e-4, "float16": 1e-2, "dynamic": 2e-2, "int8": 2e-2}


# int8 calibrates on representative_data; this share of it is held out of
# calibration and verified on, since a file is most right on what it calibrated on.
_HELD_OUT = 0.25


# Argmax agreement is judged on at least this many inputs with a clear top class
# (or half the inputs, when fewer are given); with fewer, on the values.
_MIN_CLEAR = 100


def keras_outputs(model, inputs, batch_size=256):
    batches = []
    for start in range(0, len(inputs[0]), batch_size):
        batch = [x[start : start + batch_size] for x in inputs]
        if input_dict(model) is not None:
            batch = keras.tree.pack_sequence_as(input_dict(model), batch)
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


def outputs_or_problem(content, model, inputs):
    """`(outputs, None)` from `_run_file`, or `(None, what LiteRT said)`."""
    try:
        return _run_file(content, model, inputs), None
    except litert.LiteRTError as error:
        return None, str(error)


def by_output(model, lines):
    """Joins one line per output (`None`: nothing to say), naming outputs when several."""
    names = getattr(model, "output_names", None) or [
        f"output_{i}" for i in range(len(model.outputs))
    ]
    if len(names) > 1:
        lines = [line and f"{name}: {line}" for name, line in zip(names, lines)]
    return "; ".join(line for line in lines if line) or None


def encoding_difference(sparse, dense, quantize):
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
    value_tolerance = _QUANTIZED_VALUE_TOLERANCE if quantize in QUANTIZED else tolerance
    suffix = ""
    if quantize in QUANTIZED and expected.ndim == 2 and expected.shape[1] > 1:
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


def check_file(plain, inputs, outputs, content, quantize, tolerance):
    """`(ok, line)`: the file's outputs on `inputs` against the Keras model's."""
    expected = keras_outputs(plain, inputs)
    steps = flatbuffer.output_steps(flatbuffer.read(content))
    results = [
        _compare(e, g, quantize, tolerance, step) for e, g, step in zip(expected, outputs, steps)
    ]
    return all(ok for ok, _ in results), by_output(plain, [line for _, line in results])


def split_held_out(data, quantize):
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


def quantization_or_pruning(unpruned, quantize, calibration, checked, per_channel, plain):
    """A sentence for a failed quantized verification: quantization's loss, or pruning's."""
    inputs, outputs = checked
    pruned = _argmax_agreement(keras_outputs(plain, inputs), outputs)
    if unpruned is None or pruned is None:
        return (
            " The Keras model compared against is the pruned one, so this is the loss of "
            "quantization; pass unpruned=<the model before pruning> to see whether its own "
            "quantized file loses as much."
        )
    reference = strip(unpruned) if find_wrappers(unpruned) else unpruned
    content, _ = convert(reference, quantize, False, calibration, per_channel)
    got, problem = outputs_or_problem(content, reference, inputs)
    if problem is not None:
        return f" The unpruned model's {quantize} file could not be run: {problem}."
    agreement = _argmax_agreement(keras_outputs(reference, inputs), got)
    line = (
        f" The unpruned model's {quantize} file agrees with its Keras model on {agreement:.1%} "
        f"of these inputs, this one on {pruned:.1%}: "
    )
    if agreement <= pruned + _SAME_LOSS:
        return line + "the loss comes from quantization, not from pruning."
    return line + "pruning made the model harder to quantize."
