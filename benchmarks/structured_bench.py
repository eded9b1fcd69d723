"""File size and LiteRT latency of models shrunk by structured pruning, against dense.

LeNet-300-100, LeNet-5 and a MobileNet-style CNN (a 3x3 stride-2 stem, six
depthwise-separable blocks, three of them residual, global average pooling;
32x32x3 input). Each is pruned once with `tf_lottery.UnitNorm(rate)`, which
removes `rate` of the units of every prunable layer (output layer excepted;
channels joined by a residual Add go together), and `tf_lottery.shrink` turns it
into a smaller dense model. Weights are random: size and speed do not depend on
training. Every file goes through `tf_lottery.export_tflite` (float32, and int8
calibrated on representative data), so it is loaded in LiteRT with the default
delegate (XNNPACK) and checked against Keras before it counts.

Latency: one thread, batch 1; all files of one model take turns (A B C ... A B C
...), and each pass gives the median over its repeats. With --passes=2 the table
shows the range over the two passes.

    python benchmarks/structured_bench.py [--repeats=7 --invokes=300 --passes=2]
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The LeNets are the examples' own (examples/models.py).
sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
)

import datetime  # noqa: E402
import tempfile  # noqa: E402

# First: tf_lottery loads Keras with TensorFlow's start-up logs kept out of the output.
import tf_lottery  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tflite_bench  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from models import lenet5  # noqa: E402
from models import lenet_300_100  # noqa: E402
from machine import cpu_name  # noqa: E402


flags.DEFINE_integer(
    "passes", 2, "Timing passes over all files of a model; the table gives the range."
)
flags.DEFINE_list(
    "rates", ["0.5", "0.75"], "Fractions of the units of every prunable layer removed."
)
flags.adopt_module_key_flags(tflite_bench)  # --repeats, --invokes
FLAGS = flags.FLAGS

L = keras.layers


def conv_bn(x, filters, kernel, strides=1, name=None):
    x = L.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=name)(x)
    return L.ReLU(6.0)(L.BatchNormalization()(x))


def separable_block(x, filters, strides, name):
    """DepthwiseConv2D-BN-ReLU6, 1x1 Conv2D-BN-ReLU6; residual when the shapes allow."""
    y = L.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False, name=f"{name}_dw")(x)
    y = L.ReLU(6.0)(L.BatchNormalization()(y))
    y = conv_bn(y, filters, 1, name=f"{name}_pw")
    if strides == 1 and x.shape[-1] == filters:
        y = L.Add()([x, y])
    return y


def mobilenet_style():
    """Stem 3x3/2 to 32 channels, six separable blocks (three residual), GAP, Dense(10)."""
    inputs = keras.Input((32, 32, 3))
    x = conv_bn(inputs, 32, 3, strides=2, name="stem")
    for i, (filters, strides) in enumerate(
        [(32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (256, 1)], start=1
    ):
        x = separable_block(x, filters, strides, name=f"block{i}")
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(10, name="out")(x), name="mobilenet_style")


MODELS = {
    "LeNet-300-100": lenet_300_100,
    "LeNet-5": lenet5,
    "MobileNet-style CNN": mobilenet_style,
}


def variants(build):
    """`(label, plain model, MACs)` for the dense model and each --rates."""
    keras.utils.set_random_seed(0)
    dense = build()
    result = [("dense", dense, tf_lottery.shrink_report(dense, dense).macs_before)]
    for rate in (float(r) for r in FLAGS.rates):
        wrapped = tf_lottery.wrap(dense)
        tf_lottery.prune(wrapped, tf_lottery.UnitNorm(rate))
        small = tf_lottery.shrink(wrapped)
        result.append(
            (
                f"{rate:.0%} units removed",
                small,
                tf_lottery.shrink_report(wrapped, small).macs_after,
            )
        )
    return result


def unit_counts(model):
    """The hidden Dense and convolution layers' unit counts, e.g. "150/50"."""
    return "/".join(
        str(layer.units if isinstance(layer, L.Dense) else layer.filters)
        for layer in model.layers
        if isinstance(layer, (L.Dense, L.Conv2D)) and layer.name != "out"
    )


def span(values, digits=1):
    """`"4.8"`, or `"4.8–4.9"` when the values differ at that precision."""
    low, high = (f"{v:.{digits}f}" for v in (min(values), max(values)))
    return low if low == high else f"{low}–{high}"


def main(argv):
    del argv
    print(
        f"{datetime.date.today()}, {cpu_name()}, {os.cpu_count()} CPUs; LiteRT one thread, "
        f"batch 1; per pass the median of {FLAGS.repeats} alternating repeats of "
        f"{FLAGS.invokes} invocations; ranges over {FLAGS.passes} passes.\n"
    )
    print(
        "| model | variant | units per layer | MACs | precision | file bytes | size vs dense | latency µs | speed-up | MAC reduction |"
    )
    print("| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as folder:
        for name, build in MODELS.items():
            models = variants(build)
            shape = (200,) + tuple(models[0][1].input_shape[1:])
            data = np.random.default_rng(0).random(shape).astype("float32")
            rows = []
            for quantize in (None, "int8"):
                for label, model, macs in models:
                    path = os.path.join(folder, f"{len(os.listdir(folder))}.tflite")
                    report = tf_lottery.export_tflite(
                        model, path, quantize=quantize, representative_data=data, shrink=False
                    )
                    rows.append(
                        (label, unit_counts(model), macs, quantize or "float32", path, report.size)
                    )
            passes = [
                tflite_bench.latencies([r[4] for r in rows], FLAGS.repeats, FLAGS.invokes)
                for _ in range(FLAGS.passes)
            ]
            for index, (label, units, macs, precision, _, size) in enumerate(rows):
                base = index - index % len(models)  # the dense file of the same precision
                times = [p[index] for p in passes]
                speedups = [p[base] / p[index] for p in passes]
                print(
                    f"| {name} | {label} | {units} | {macs:,} | {precision} | {size:,} | "
                    f"{size / rows[base][5]:.0%} | {span(times)} | {span(speedups, 2)}x | "
                    f"{rows[base][2] / macs:.2f}x |",
                    flush=True,
                )


if __name__ == "__main__":
    app.run(main)
