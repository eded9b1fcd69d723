"""Time and memory of wrapping and of one pruning round, 1 to 100 million prunable weights.

Models are stacks of square Dense layers (--width; 1000 gives one layer per million
weights), never trained. For each size, scope and
criterion (--criteria), one `tf_lottery.prune` round is timed (median of --repeats, bare),
each from the same dense weights (masks set to ones and weights rewound to θ0 first), and
one more round's memory measured two ways: the peak of numpy allocations (tracemalloc) and the
peak rise of the process's resident memory (sampled every 2 ms), both in copies
of the prunable weights (4 bytes each). The cost should grow linearly (or
n log n for a sort): the per-weight time column says whether it does.

A second table, per size, times what a lottery round adds to the prune: the
rewind to θ0 and the optimizer reset (Adam, built), in ms per million prunable
weights, and gives the resident memory that `wrap` added in copies of the prunable
weights: with the default keep it copies the model and adds one saved copy and a
uint8 mask per weight, 2.25 copies while the original model lives (1.25 once it is
dropped). Resident memory also holds what the allocator keeps after a free; with
`MALLOC_MMAP_THRESHOLD_=65536` glibc returns large blocks at once, so the rise is
what was live.

    python benchmarks/mask_update_scaling.py [--sizes=1,10,50,100 --repeats=3]
    python benchmarks/mask_update_scaling.py --sizes=50 --criteria=global
    KERAS_BACKEND=jax python benchmarks/mask_update_scaling.py    # or torch
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import time  # noqa: E402
import tracemalloc  # noqa: E402

# First: tf_lottery loads Keras with TensorFlow's start-up logs kept out of the output.
import tf_lottery  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from machine import PeakResident  # noqa: E402
from machine import cpu_name  # noqa: E402


flags.DEFINE_list("sizes", ["1", "10", "50", "100"], "Millions of prunable weights.")
flags.DEFINE_integer("repeats", 3, "Timed rounds per setting (median).")
flags.DEFINE_list(
    "criteria", ["std", "layer", "global"], "Criteria to time: std, layer and/or global."
)
flags.DEFINE_integer(
    "width", 1000, "Width of the square Dense layers (1000: one layer per million)."
)
FLAGS = flags.FLAGS

CRITERIA = {
    "std": ("StdThreshold(0.5)", lambda: tf_lottery.StdThreshold(0.5)),
    "layer": ("PruneFraction(0.2), layer", lambda: tf_lottery.PruneFraction(0.2)),
    "global": (
        "PruneFraction(0.2), global",
        lambda: tf_lottery.PruneFraction(0.2, scope="global"),
    ),
}


def model_with(million, width):
    """Square Dense layers of `width`, as many as make about `million` million weights.

    Returns the wrapped model, its prunable weight count, and the resident bytes
    that wrapping added (peak rise while `wrap` ran).
    """
    layers = max(1, round(million * 1e6 / width**2))
    inputs = keras.Input((width,))
    x = inputs
    for i in range(layers):
        x = keras.layers.Dense(width, name=f"fc{i}")(x)
    model = keras.Model(inputs, x)
    # Keras imports TensorFlow, where it is installed, at the first get_config of
    # a layer on any backend (serialization checks for tf.TensorShape): 0.7-1.5 GB
    # of resident memory on JAX and PyTorch that is not wrap's. Imported first.
    model.layers[-1].get_config()
    with PeakResident() as resident:
        model = tf_lottery.wrap(model)
    return model, layers * width * width, resident.peak - resident.start


def lottery_parts(model, repeats):
    """Median seconds of a rewind to θ0 and of a reset of a built Adam optimizer."""
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    model.optimizer.build(model.trainable_variables)
    rewinds, resets = [], []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        tf_lottery.rewind(model)
        rewinds.append(time.perf_counter() - start)
        start = time.perf_counter()
        tf_lottery.reset_optimizer(model.optimizer)
        resets.append(time.perf_counter() - start)
    # The first reset builds the optimizer's fresh twin once: shown apart.
    return float(np.median(rewinds[1:])), resets[0], float(np.median(resets[1:]))


def _threads():
    """The torch threads, on PyTorch: its thread pool decides its times on a busy machine.

    OpenMP threads that wait actively (the default) made a round 2-5x slower
    on 2 cores shared with other processes; `OMP_WAIT_POLICY=PASSIVE` or
    `OMP_NUM_THREADS=1` gave it back.
    """
    if keras.backend.backend() != "torch":
        return ""
    import torch

    policy = os.environ.get("OMP_WAIT_POLICY")
    return f", {torch.get_num_threads()} torch threads" + (
        f", OMP_WAIT_POLICY={policy}" if policy else ""
    )


def main(argv):
    del argv
    print(
        f"Machine: {cpu_name()}, {os.cpu_count()} CPUs; keras {keras.__version__} on "
        f"{keras.backend.backend()}; {FLAGS.width}x{FLAGS.width} Dense layers; median of "
        f"{FLAGS.repeats} rounds{_threads()}. CPU seconds count every thread of the process; "
        "the load average is the 1-minute one as the row ends.\n"
    )
    print(
        "| prunable weights | criterion | seconds | CPU seconds | ns / weight | "
        "numpy peak (copies) | resident peak rise (copies) | load average |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    others = []
    for million in (float(s) for s in FLAGS.sizes):
        keras.utils.set_random_seed(0)
        model, count, wrapped = model_with(million, FLAGS.width)
        copy = 4 * count
        for key in FLAGS.criteria:
            if key not in CRITERIA:
                raise ValueError(f"Expected --criteria from {sorted(CRITERIA)}. Received: {key!r}")
            name, make = CRITERIA[key]
            seconds, cpu_seconds, numpy_peaks, resident_peaks = [], [], [], []
            # Rounds timed bare, then one more measured for memory: tracemalloc and
            # the sampling thread slow a round by 20-35% at 50M weights.
            for repeat in range(FLAGS.repeats + 1):
                # Every round starts from the same dense weights: masks back to
                # ones and weights back to θ0, so that a round never sees the
                # zeros (ties at the cut) that the rounds before it left.
                for wrapper in tf_lottery.find_wrappers(model):
                    mask = wrapper.masks["kernel"]
                    mask.assign(np.ones(mask.shape, mask.dtype))
                tf_lottery.rewind(model)
                if repeat < FLAGS.repeats:
                    start, cpu_start = time.perf_counter(), time.process_time()
                    tf_lottery.prune(model, make())
                    seconds.append(time.perf_counter() - start)
                    cpu_seconds.append(time.process_time() - cpu_start)
                    continue
                tracemalloc.start()
                with PeakResident() as resident:
                    tf_lottery.prune(model, make())
                numpy_peaks.append(tracemalloc.get_traced_memory()[1] / copy)
                tracemalloc.stop()
                resident_peaks.append((resident.peak - resident.start) / copy)
            median = float(np.median(seconds))
            print(
                f"| {count:,} | {name} | {median:.2f} | {np.median(cpu_seconds):.2f} | "
                f"{median / count * 1e9:.1f} | "
                f"{max(numpy_peaks):.2f} | {max(resident_peaks):.2f} | "
                f"{os.getloadavg()[0]:.1f} |",
                flush=True,
            )
        rewind, first_reset, reset = lottery_parts(model, FLAGS.repeats)
        others.append((count, wrapped / copy, rewind, first_reset, reset))
        del model
        keras.backend.clear_session()
    print(
        "\n| prunable weights | wrap: resident rise (copies) | rewind ms (per M) | "
        "first optimizer reset ms | optimizer reset ms (per M) |"
    )
    print("| ---: | ---: | ---: | ---: | ---: |")
    for count, wrapped, rewind, first_reset, reset in others:
        per = 1e9 / count
        print(
            f"| {count:,} | {wrapped:.2f} | {rewind * 1e3:.0f} ({rewind * per:.1f}) | "
            f"{first_reset * 1e3:.0f} | {reset * 1e3:.0f} ({reset * per:.1f}) |"
        )


if __name__ == "__main__":
    app.run(main)
