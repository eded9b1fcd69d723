"""Converting a Keras model to .tflite bytes with TensorFlow's converter.

What `export_tflite` converts: a float32 graph model with known inputs
(`exportable`), written once to a SavedModel that the sparse and the dense
conversion both read (`saved_model`, `convert_saved`), with the converter's own
warnings kept and its routine lines dropped.
"""

import contextlib
import functools
import importlib.util
import re
import tempfile

import keras
import numpy as np

from tf_lottery import keras_private
from tf_lottery.export.capture import captured_output
from tf_lottery.export.samples import ModelInput


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


def keras_inputs(model):
    return [ModelInput(t.name, tuple(t.shape)) for t in model.inputs]


def _converter_notes(lines):
    """The converter's warnings and errors, less what every conversion says."""
    notes = []
    for line in lines:
        if _WARNING_LINE.match(line) and not any(c in line for c in _CONVERTER_CHATTER):
            notes.append("Converter: " + " ".join(_WARNING_LINE.sub("", line).split()))
    return notes


def converter_hint(error, model):
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


def exportable(model, data, batch_size):
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


def check_converter_available():
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


def convert(model, quantize, sparse, calibration, per_channel=True, select_tf_ops=False):
    """The .tflite bytes, and what the converter said that matters."""
    with saved_model(model) as source:
        return convert_saved(
            source, model, quantize, sparse, calibration, per_channel, select_tf_ops
        )


def convert_saved(source, model, quantize, sparse, calibration, per_channel, select_tf_ops):
    """`convert` from a `saved_model(model)` source, so that one SavedModel serves several runs."""
    converter = source()
    _configure(converter, model, quantize, sparse, calibration, per_channel, select_tf_ops)
    with captured_output() as lines:
        content = converter.convert()
    return content, _converter_notes(lines)


def input_dict(model):
    """The model's input structure when it takes a dict of inputs, else `None`."""
    # A Sequential takes no dict, and one never called (built from keras.Input,
    # or loaded) has no `input` of its own.
    if isinstance(model, keras.Sequential) or not isinstance(model.input, dict):
        return None
    return model.input


def _input_signature(model):
    """The `serve` signature of a graph model, as TensorFlow's own Keras 3 conversion makes it."""
    import tensorflow as tf

    if input_dict(model) is not None:
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
def saved_model(model):
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
