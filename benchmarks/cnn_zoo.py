"""Params, MACs and LiteRT latency of Keras Applications CNNs, dense against shrunk.

Each model (examples/models.py `CNN_ZOO`: random weights, random BatchNormalization
statistics) is pruned once with `tf_lottery.UnitNorm(rate, round_to=...)` and
turned into a smaller dense model by `tf_lottery.shrink`. Both go through
TensorFlow's converter as float32 and as int8 (calibrated on random images), in
the dense encoding that `export_tflite` writes for them. Latency: LiteRT, one thread, batch 1; the files of one model
take turns, each pass gives the median of its repeats, and the table shows the
range over the passes.

    python benchmarks/cnn_zoo.py [--models=MobileNetV3Small,EfficientNetB0 --size=224
                                  --rate=0.5 --round_to=8 --repeats=5 --invokes=50 --passes=2]
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
)

import datetime  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402

# First: tf_lottery loads Keras with TensorFlow's start-up logs kept out of the output.
import tf_lottery  # noqa: E402
import numpy as np  # noqa: E402
import tflite_bench  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from machine import cpu_name  # noqa: E402
from tf_lottery.export.capture import captured_output  # noqa: E402
from models import CNN_ZOO  # noqa: E402
from models import cnn_zoo_model  # noqa: E402
from structured_bench import span  # noqa: E402

flags.DEFINE_list("models", list(CNN_ZOO), "Models of examples/models.py CNN_ZOO.")
flags.DEFINE_integer("size", None, "Input height and width; default: each model's own.")
flags.DEFINE_float("rate", 0.5, "Fraction of the units of every prunable group removed.")
flags.DEFINE_integer("round_to", 8, "Keep unit counts a multiple of this.")
flags.DEFINE_integer("samples", 64, "Random images for int8 calibration.")
flags.adopt_module_key_flags(tflite_bench)  # --repeats, --invokes
flags.adopt_module_key_flags(sys.modules["structured_bench"])  # --passes
FLAGS = flags.FLAGS


def export(model, folder, quantize, data):
    """A dense-encoded .tflite file of `model`, converted once (export_tflite converts
    twice and runs both files; tests/test_cnn_zoo.py checks that path on these models)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([x[None]] for x in data)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    path = os.path.join(folder, f"{len(os.listdir(folder))}.tflite")
    with captured_output():
        content = converter.convert()
    with open(path, "wb") as f:
        f.write(content)
    return path


def measure(name, folder):
    """`(cells, latencies per pass)` for one model: dense and shrunk, float and int8."""
    dense = cnn_zoo_model(name, input_size=FLAGS.size)
    wrapped = tf_lottery.wrap(dense)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tf_lottery.prune(wrapped, tf_lottery.UnitNorm(FLAGS.rate, round_to=FLAGS.round_to))
        small = tf_lottery.shrink(wrapped)
    left_alone = sum(1 for w in caught if "as they are" in str(w.message))
    report = tf_lottery.shrink_report(wrapped, small)
    shape = (FLAGS.samples, *dense.input_shape[1:])
    data = np.random.default_rng(0).uniform(0, 255, shape).astype("float32")
    paths = [export(m, folder, q, data) for q in (None, "int8") for m in (dense, small)]
    passes = [
        tflite_bench.latencies(paths, FLAGS.repeats, FLAGS.invokes) for _ in range(FLAGS.passes)
    ]
    return report, left_alone, dense.input_shape[1], passes


def main(argv):
    del argv
    print(
        f"{datetime.date.today()}, {cpu_name()}, {os.cpu_count()} CPUs; UnitNorm({FLAGS.rate}, "
        f"round_to={FLAGS.round_to}); LiteRT one thread, batch 1; per pass the median of "
        f"{FLAGS.repeats} alternating repeats of {FLAGS.invokes} invocations; ranges over "
        f"{FLAGS.passes} passes.\n"
    )
    print(
        "| model | input | params dense → shrunk | MACs dense → shrunk | MACs fewer | "
        "float ms dense → shrunk | float faster | int8 ms dense → shrunk | int8 faster | "
        "unknown-layer warnings |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as folder:
        for name in FLAGS.models:
            report, left_alone, size, passes = measure(name, folder)
            ms = [[t / 1000 for t in p] for p in passes]
            cells = []
            for dense_at, small_at in ((0, 1), (2, 3)):
                dense_ms = [p[dense_at] for p in ms]
                small_ms = [p[small_at] for p in ms]
                cells.append(f"{span(dense_ms, 2)} → {span(small_ms, 2)}")
                cells.append(f"{span([d / s for d, s in zip(dense_ms, small_ms)], 2)}x")
            print(
                f"| {name} | {size}² | {report.params_before / 1e6:.2f}M → "
                f"{report.params_after / 1e6:.2f}M | {report.macs_before / 1e6:.1f}M → "
                f"{report.macs_after / 1e6:.1f}M | {report.macs_before / report.macs_after:.2f}x | "
                + " | ".join(cells)
                + f" | {left_alone} |",
                flush=True,
            )


if __name__ == "__main__":
    app.run(main)
