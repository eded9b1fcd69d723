"""Running .tflite files in LiteRT: inputs matched by name, run at the file's batch size.

TensorFlow's own `tf.lite.Interpreter` is being retired: files are loaded and run
with LiteRT (`ai-edge-litert`), the runtime that ships on devices, with its
default delegate (XNNPACK).

Part of tf_lottery's LiteRT side: imports neither Keras nor TensorFlow, so it
works with `tf_lottery[litert]` alone and keeps `tf-lottery eval` fast (see
docs/imports.md).
"""

import os
import re

import numpy as np

from tf_lottery.export.capture import captured_output
from tf_lottery.export.flatbuffer import check_identifier
from tf_lottery.export.flatbuffer import natural_key
from tf_lottery.export.samples import ModelInput
from tf_lottery.export.samples import another_order
from tf_lottery.export.samples import arrange


class LiteRTError(RuntimeError):
    """LiteRT could not load, allocate or run a .tflite file."""


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as error:
        raise ImportError(
            "Loading .tflite files needs LiteRT: pip install ai-edge-litert "
            "(or pip install 'tf_lottery[export]')."
        ) from error
    return Interpreter


def clean_message(error):
    """LiteRT's error text as one line.

    LiteRT runs its messages together ("node #4failed to delegate ...",
    "failed to prepare.") and repeats some; this separates them with "; ",
    drops repeats and the final full stop.
    """
    parts = re.split(r"\n|(?<=\S)(?=failed to delegate|Node number)", str(error))
    unique = dict.fromkeys(part.strip().rstrip(".").strip() for part in parts)
    return "; ".join(part for part in unique if part)


def load(path_or_bytes, num_threads=1):
    """Loads a .tflite file with the default delegate and allocates its tensors.

    Args:
        path_or_bytes: A .tflite file path, or its bytes.
        num_threads: LiteRT threads. Defaults to `1`.

    Returns:
        A LiteRT `Interpreter`.

    Raises:
        FileNotFoundError: No such file.
        ValueError: It is not a .tflite file (a .keras model, say).
        LiteRTError: LiteRT refused the file; the message is one clean line.
    """
    interpreter_class = _interpreter_class()
    if isinstance(path_or_bytes, (bytes, bytearray)):
        source = {"model_content": bytes(path_or_bytes)}
        head = source["model_content"][:8]
    else:
        source = {"model_path": os.fspath(path_or_bytes)}
        if not os.path.isfile(source["model_path"]):
            raise FileNotFoundError(f"No such .tflite file: {source['model_path']}")
        with open(source["model_path"], "rb") as file:
            head = file.read(8)
    check_identifier(head, source.get("model_path", "The bytes given"))
    try:
        with captured_output():
            interpreter = interpreter_class(**source, num_threads=num_threads)
            interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as error:
        raise LiteRTError(f'loading failed: "{clean_message(error)}"') from error
    return interpreter


def signature(interpreter):
    """The file's inputs and outputs: two lists of LiteRT tensor details.

    With a single signature (every file the TFLite converter makes from Keras),
    each detail's `"name"` is the signature's name for it: a Keras model's input
    names, and `output_0`, `output_1`, ... in the order of the model's outputs.
    Inputs are in the signature's order, outputs in that numeric order.
    """
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        return interpreter.get_input_details(), interpreter.get_output_details()
    runner = interpreter.get_signature_runner(next(iter(signatures)))
    inputs = [{**d, "name": name} for name, d in runner.get_input_details().items()]
    outputs = [{**d, "name": name} for name, d in runner.get_output_details().items()]
    return inputs, sorted(outputs, key=lambda d: natural_key(d["name"]))


def model_inputs(details):
    """The `ModelInput`s of a file's input details, `None` where any size goes."""
    return [
        ModelInput(d["name"], tuple(None if s < 0 else int(s) for s in d["shape_signature"]))
        for d in details
    ]


def _quantization(detail):
    scales = detail["quantization_parameters"]["scales"]
    zero_points = detail["quantization_parameters"]["zero_points"]
    if len(scales) == 1 and scales[0] > 0:
        return float(scales[0]), int(zero_points[0])
    return None


def _to_file(array, detail):
    quantization = _quantization(detail)
    dtype = np.dtype(detail["dtype"])
    if quantization is not None and np.issubdtype(array.dtype, np.floating):
        scale, zero_point = quantization
        limits = np.iinfo(dtype)
        array = np.clip(np.round(array / scale + zero_point), limits.min, limits.max)
    return array.astype(dtype)


def _from_file(array, detail):
    quantization = _quantization(detail)
    if quantization is None:
        return array
    scale, zero_point = quantization
    return ((array.astype(np.float32) - zero_point) * scale).astype(np.float32)


def _fit_sample_shapes(interpreter, details, inputs, batch):
    """Resizes once the inputs whose sample shape the file leaves open (a sequence length)."""
    resized = False
    for detail, array in zip(details, inputs):
        shape = [batch, *array.shape[1:]]
        if list(detail["shape"]) != shape:
            interpreter.resize_tensor_input(detail["index"], shape)
            resized = True
    if resized:
        interpreter.allocate_tensors()


def run(interpreter, inputs):
    """Runs arrays through a loaded file, one batch of the file's own size at a time.

    Resizing the input would make XNNPACK set its delegate up again (and some
    files only run at the batch size they were converted with), so the samples
    go through at that size and a short last batch is padded.

    Args:
        interpreter: From `load`.
        inputs: One array per file input, in `signature(interpreter)` order,
            all with the same number of samples. Float arrays are quantized
            for integer inputs.

    Returns:
        One array per file output, in `signature` order; integer outputs
        are dequantized to float32.

    Raises:
        LiteRTError: LiteRT failed to run the file; the message is one line.
    """
    input_details, output_details = signature(interpreter)
    batch = max(1, int(input_details[0]["shape"][0]))
    count = len(inputs[0])
    results = [[] for _ in output_details]
    try:
        with captured_output():
            _fit_sample_shapes(interpreter, input_details, inputs, batch)
            for start in range(0, count, batch):
                for detail, array in zip(input_details, inputs):
                    part = array[start : start + batch]
                    padding = np.repeat(part[-1:], batch - len(part), axis=0)
                    interpreter.set_tensor(
                        detail["index"], _to_file(np.concatenate([part, padding]), detail)
                    )
                interpreter.invoke()
                for result, detail in zip(results, output_details):
                    result.append(interpreter.get_tensor(detail["index"])[: count - start])
    except (RuntimeError, ValueError) as error:
        raise LiteRTError(f'invoke() failed: "{clean_message(error)}"') from error
    return [
        _from_file(np.concatenate(result), detail)
        for result, detail in zip(results, output_details)
    ]


def run_tflite(path_or_bytes, x, *, num_threads=1):
    """Runs a .tflite file in LiteRT with its default delegate.

    The samples go through at the file's own batch size (1 for files made
    from Keras models), so any number of them can be given.

    Args:
        path_or_bytes: A .tflite file path, or its bytes.
        x: The inputs: an array for a one-input file; for several inputs a
            dict by input name (a Keras model's input names), or a list in the
            file's signature order (alphabetical by input name for files made
            from Keras, which need not be the Keras model's order). A file does
            not record its model's input order, so a list whose arrays would
            fit the inputs in another order too is refused: pass a dict.
        num_threads: LiteRT threads. Defaults to `1`.

    Returns:
        The output array, or a list of them for a file with several outputs,
        in the Keras model's output order. int8 outputs are dequantized.

    Example:

    ```python
    logits = tf_lottery.run_tflite("lenet.tflite", x_test)
    accuracy = (logits.argmax(1) == y_test).mean()
    scores, boxes = tf_lottery.run_tflite("two_heads.tflite", {"image": x, "meta": m})
    ```
    """
    interpreter = load(path_or_bytes, num_threads)
    input_details, _ = signature(interpreter)
    specs = model_inputs(input_details)
    orders = {"the file's signature order (by name)": [spec.name for spec in specs]}
    other = another_order(x, specs)
    if other is not None:
        orders["another they fit, which may be the Keras model's (the file does not say)"] = other
    outputs = run(interpreter, arrange(x, specs, "x", orders))
    return outputs[0] if len(outputs) == 1 else outputs
