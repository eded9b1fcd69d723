"""Time and memory of one pruning round for 1, 10 and 50 million prunable weights.

Models are stacks of square Dense layers (--width; 1000 gives one layer per million
weights), never trained. For each size, scope and
criterion, one `tf_lottery.prune` round is timed (median of --repeats) and its
memory measured two ways: the peak of numpy allocations (tracemalloc) and the
peak rise of the process's resident memory (sampled every 2 ms), both in copies
of the prunable weights (4 bytes each). The cost should grow linearly (or
n log n for a sort): the per-weight time column says whether it does.

    python benchmarks/mask_update_scaling.py [--sizes=1,10,50 --repeats=3]
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import platform  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

# First: tf_lottery loads Keras with TensorFlow's start-up logs kept out of the output.
import tf_lottery  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from machine import PeakResident  # noqa: E402


flags.DEFINE_list("sizes", ["1", "10", "50"], "Millions of prunable weights.")
flags.DEFINE_integer("repeats", 3, "Timed rounds per setting (median).")
flags.DEFINE_integer(
    "width", 1000, "Width of the square Dense layers (1000: one layer per million)."
)
FLAGS = flags.FLAGS

CRITERIA = {
    "StdThreshold(0.5)": lambda: tf_lottery.StdThreshold(0.5),
    "PruneFraction(0.2), layer": lambda: tf_lottery.PruneFraction(0.2),
    "PruneFraction(0.2), global": lambda: tf_lottery.PruneFraction(0.2, scope="global"),
}


def model_with(million, width):
    """Square Dense layers of `width`, as many as make about `million` million weights."""
    layers = max(1, round(million * 1e6 / width**2))
    inputs = keras.Input((width,))
    x = inputs
    for i in range(layers):
        x = keras.layers.Dense(width, name=f"fc{i}")(x)
    return tf_lottery.wrap(keras.Model(inputs, x)), layers * width * width


def main(argv):
    del argv
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs; {FLAGS.width}x{FLAGS.width} "
        f"Dense layers; median of {FLAGS.repeats} rounds.\n"
    )
    print(
        "| prunable weights | criterion | seconds | ns / weight | numpy peak (copies) | resident peak rise (copies) |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for million in (float(s) for s in FLAGS.sizes):
        keras.utils.set_random_seed(0)
        model, count = model_with(million, FLAGS.width)
        copy = 4 * count
        for name, make in CRITERIA.items():
            seconds, numpy_peaks, resident_peaks = [], [], []
            for _ in range(FLAGS.repeats):
                for wrapper in tf_lottery.find_wrappers(model):
                    wrapper.masks["kernel"].assign(
                        np.ones(wrapper.masks["kernel"].shape, "float32")
                    )
                tracemalloc.start()
                with PeakResident() as resident:
                    start = time.perf_counter()
                    tf_lottery.prune(model, make())
                    seconds.append(time.perf_counter() - start)
                numpy_peaks.append(tracemalloc.get_traced_memory()[1] / copy)
                tracemalloc.stop()
                resident_peaks.append((resident.peak - resident.start) / copy)
            median = float(np.median(seconds))
            print(
                f"| {count:,} | {name} | {median:.2f} | {median / count * 1e9:.1f} | "
                f"{max(numpy_peaks):.2f} | {max(resident_peaks):.2f} |",
                flush=True,
            )
        del model
        keras.backend.clear_session()


if __name__ == "__main__":
    app.run(main)
