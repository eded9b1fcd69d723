"""Instability analysis of LeNet-300-100 tickets against random pruning (Frankle et al. 2020).

Each round of a lottery run, ticket and random_prune control alike, trains a
second copy from the round's starting point (θ0, or the weights after k epochs
with --rewind=k) with the same masks on another data order, and measures the
error along the straight line between the two trained networks. The error
barrier (largest error on the path minus the mean of its ends) is about zero
when the subnetwork is stable; Frankle et al. report that for LeNet-300-100 the
tickets found by magnitude pruning are stable at θ0 while random subnetworks of
the same sparsity become unstable as they get sparser. Writes the table, a plot
of accuracy and barrier against sparsity, and the error along every path.

    python examples/mnist_instability.py                  # offline, ~1.5 min on 2 CPUs
    python examples/mnist_instability.py --seeds=0,1,2    # error bars, ~4 min
    python examples/mnist_instability.py --data=keras --epochs_per_round=20 --seeds=0,1,2
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from models import classifier_compile_kwargs  # noqa: E402
from models import lenet_300_100  # noqa: E402
import mnist  # noqa: E402

import tf_lottery  # noqa: E402
from tf_lottery.experiments.paths import RunPaths  # noqa: E402

flags.DEFINE_integer("rounds", 4, "Pruning rounds; 0.5^4 leaves 6% of the hidden weights.")
flags.DEFINE_integer("epochs_per_round", 5, "Training epochs of each copy in each round.")
flags.DEFINE_float(
    "rate", 0.5, "Fraction of surviving weights pruned per round (output layer: half)."
)
flags.DEFINE_string("rewind", "init", "'init' (θ0) or an epoch count k (late rewinding).")
flags.DEFINE_integer("points", 11, "Points on each linear path, both ends included.")
flags.DEFINE_list("seeds", [], "Several seeds, e.g. 0,1,2, for error bars; default: --seed.")
flags.DEFINE_string(
    "out_dir",
    "runs/mnist_instability",
    "Folder for the runs; each --data source gets its own subfolder.",
)
flags.adopt_module_key_flags(mnist)  # --help lists the shared data flags too
FLAGS = flags.FLAGS


def paths_of(out_dir, history):
    """The interpolation of every row, by a label such as "ticket 25.0%"."""
    seeds = len(history.seeds) > 1
    results = {}
    for row in history.rows:
        run = RunPaths(os.path.join(out_dir, f"seed_{row.seed}") if seeds else out_dir)
        with open(RunPaths.instability(run.round_dir(row.arm, row.round))) as file:
            path = json.load(file)
        label = f"{row.arm} {row.remaining:.1%}" + (f" seed {row.seed}" if seeds else "")
        results[label] = tf_lottery.InterpolationResult(
            path["alphas"], path["loss"], path["accuracy"]
        )
    return results


def main(argv):
    del argv
    data = mnist.load()
    out_dir = os.path.join(FLAGS.out_dir, data.name)
    seeds = {"seeds": tuple(int(s) for s in FLAGS.seeds)} if FLAGS.seeds else {"seed": FLAGS.seed}
    history = tf_lottery.find_winning_ticket(
        lenet_300_100,
        (data.train.x, data.train.y),
        validation_data=(data.validation.x, data.validation.y),
        test_data=(data.test.x, data.test.y),
        criterion=tf_lottery.PruneFraction(FLAGS.rate),
        rounds=FLAGS.rounds,
        epochs_per_round=FLAGS.epochs_per_round,
        rewind=int(FLAGS.rewind) if FLAGS.rewind.isdigit() else "init",
        controls=["random_prune"],
        instability_points=FLAGS.points,
        out_dir=out_dir,
        compile_kwargs=classifier_compile_kwargs(FLAGS.learning_rate),
        fit_kwargs={"batch_size": FLAGS.batch_size},
        **seeds,
    )
    print(f"\n{history}")
    plot = os.path.join(out_dir, "instability.png")
    tf_lottery.plot_history(history, plot)
    paths = os.path.join(out_dir, "paths.png")
    tf_lottery.plot_interpolation(paths_of(out_dir, history), paths)
    print(f"\nPlots: {plot} (accuracy and error barrier against sparsity), {paths} (every path)")


if __name__ == "__main__":
    app.run(main)
