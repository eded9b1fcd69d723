"""File size and LiteRT latency of sparse TFLite exports, against dense ones.

For LeNet-300-100 and a 1024-1024-10 MLP at 90% and 95% sparsity: dense float,
float sparse (unstructured and 1x4 blocks), dense int8 and int8 sparse (1x16
blocks). Every file goes through `tf_lottery.export_tflite`, so it is loaded in
LiteRT with the default delegate and checked against Keras before it counts.
Latency: one thread, batch 1, median over alternating repeats (A B C D E A B ...).
Weights are random: size and speed do not depend on training.

    python benchmarks/tflite_bench.py [--repeats=7 --invokes=300]
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tempfile  # noqa: E402
import time  # noqa: E402

# First: tf_lottery loads Keras with TensorFlow's start-up logs kept out of the output.
import tf_lottery  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from machine import cpu_name  # noqa: E402


flags.DEFINE_integer("repeats", 7, "Alternating repeats per variant.")
flags.DEFINE_integer("invokes", 300, "Invocations timed per repeat.")
FLAGS = flags.FLAGS

MODELS = {
    "LeNet-300-100": (784, 300, 100, 10),
    "MLP 1024-1024-10": (1024, 1024, 10),
    # Two hidden layers: the 8.4 MB dense model of the export issue's measurements.
    "MLP 1024-1024-1024-10": (1024, 1024, 1024, 10),
}
# name: (block, quantize, per_channel); block None means the unpruned model.
VARIANTS = {
    "dense float": (None, None, True),
    "float sparse, unstructured": ((1, 1), None, True),
    "float sparse, 1x4 blocks": ("tflite-float", None, True),
    "dense int8": (None, "int8", True),
    "int8 sparse, 1x16 blocks": ("tflite-int8", "int8", True),
    "int8 sparse, 1x16, per-tensor": ("tflite-int8", "int8", False),
}


def mlp(sizes):
    layers = [keras.Input((sizes[0],))]
    for i, size in enumerate(sizes[1:]):
        last = i == len(sizes) - 2
        layers.append(
            keras.layers.Dense(size, activation=None if last else "relu", name=f"fc{i + 1}")
        )
    return keras.Sequential(layers)


def export(sizes, sparsity, block, quantize, per_channel, folder, data):
    keras.utils.set_random_seed(0)
    model = tf_lottery.wrap(mlp(sizes))
    if block is not None:
        tf_lottery.prune(
            model, tf_lottery.PruneFraction(sparsity, block=block, output_rate=sparsity)
        )
    path = os.path.join(folder, f"{len(os.listdir(folder))}.tflite")
    # shrink=False: this table measures the sparse encodings alone; one-shot pruning
    # of random weights leaves dead units that shrink would remove (see
    # benchmarks/structured_bench.py for what removing units gives).
    report = tf_lottery.export_tflite(
        model,
        path,
        quantize=quantize,
        representative_data=data,
        per_channel=per_channel,
        shrink=False,
    )
    return path, report, tf_lottery.sparsity(model).sparsity


def latencies(paths, repeats, invokes):
    from ai_edge_litert.interpreter import Interpreter

    interpreters = []
    for path in paths:
        interpreter = Interpreter(model_path=path, num_threads=1)
        interpreter.allocate_tensors()
        (inputs,) = interpreter.get_input_details()
        interpreter.set_tensor(
            inputs["index"],
            np.random.default_rng(0).random(inputs["shape"]).astype(inputs["dtype"]),
        )
        for _ in range(50):
            interpreter.invoke()
        interpreters.append(interpreter)
    samples = [[] for _ in paths]
    for _ in range(repeats):
        for index, interpreter in enumerate(interpreters):
            times = []
            for _ in range(invokes):
                start = time.perf_counter()
                interpreter.invoke()
                times.append(time.perf_counter() - start)
            samples[index].append(np.median(times))
    return [float(np.median(s)) * 1e6 for s in samples]


def main(argv):
    del argv
    print(
        f"Machine: {cpu_name()}, {os.cpu_count()} CPUs; "
        f"LiteRT one thread, batch 1; median of {FLAGS.repeats} alternating repeats of "
        f"{FLAGS.invokes} invocations.\n"
    )
    print(
        "| model | sparsity | variant | file bytes | vs dense float | latency µs | speed-up | note |"
    )
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |")
    with tempfile.TemporaryDirectory() as folder:
        for name, sizes in MODELS.items():
            data = np.random.default_rng(0).random((200, sizes[0])).astype("float32")
            for sparsity in (0.90, 0.92, 0.95):
                rows = []
                for variant, (block, quantize, per_channel) in VARIANTS.items():
                    path, report, actual = export(
                        sizes, sparsity, block, quantize, per_channel, folder, data
                    )
                    fell_back = block is not None and report.size == report.dense_size
                    note = "fell back to dense" if fell_back else ""
                    if report.densified_ops:
                        note = "DENSIFY before " + ", ".join(report.densified_ops)
                    rows.append((variant, path, report.size, actual, note))
                times = latencies([r[1] for r in rows], FLAGS.repeats, FLAGS.invokes)
                base_size, base_time = rows[0][2], times[0]
                for (variant, _, size, actual, note), latency in zip(rows, times):
                    print(
                        f"| {name} | {actual:.1%} | {variant} | {size:,} | "
                        f"{base_size / size:.1f}x smaller | {latency:.1f} | "
                        f"{base_time / latency:.2f}x | {note} |",
                        flush=True,
                    )


if __name__ == "__main__":
    app.run(main)
