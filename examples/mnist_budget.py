"""Prune LeNet-5 as far as it goes within half a point of accuracy (Han et al.).

1. Train the dense LeNet-5.
2. Sensitivity analysis on the validation set: each layer pruned alone with
   StdThreshold at several qualities s, no retraining.
3. Per-layer s: the largest that keeps that layer alone within --max_drop.
4. Prune and retrain round after round with those s (Han: no rewinding); stop
   when validation accuracy falls more than --max_drop below the dense network's,
   and go back to the last round within the budget.

    python examples/mnist_budget.py                  # offline defaults, ~30 s on 2 CPUs
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# First: tf_lottery loads Keras with TensorFlow's start-up logs kept out of the output.
import tf_lottery  # noqa: E402
import keras  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from models import classifier_compile_kwargs  # noqa: E402
from models import lenet5  # noqa: E402
import mnist  # noqa: E402


flags.DEFINE_float("max_drop", 0.005, "Allowed drop of validation accuracy (0.005 = half a point).")
flags.DEFINE_list(
    "qualities", ["0.25", "0.5", "0.75", "1", "1.25", "1.5", "2", "2.5"], "Qualities s to try."
)
flags.DEFINE_integer("dense_epochs", 6, "Epochs of dense training.")
flags.DEFINE_integer("epochs_per_round", 3, "Retraining epochs per round.")
flags.DEFINE_integer("rounds", 8, "Most prune-and-retrain rounds.")
flags.DEFINE_bool(
    "fixed_std",
    True,
    "Keep each layer's threshold from the dense std (Distiller), "
    "instead of taking std over the survivors each round (Han).",
)
flags.DEFINE_string("out_dir", "runs/mnist_budget", "Folder for the sensitivity table and plot.")
flags.adopt_module_key_flags(mnist)  # --help lists the shared data flags too
FLAGS = flags.FLAGS


def main(argv):
    del argv
    keras.utils.set_random_seed(FLAGS.seed)
    data = mnist.load()
    x, x_val, x_test = (split.x[..., None] for split in (data.train, data.validation, data.test))
    model = tf_lottery.wrap(lenet5())
    model.compile(**classifier_compile_kwargs(FLAGS.learning_rate))
    fit = dict(batch_size=FLAGS.batch_size, verbose=0, validation_data=(x_val, data.validation.y))
    model.fit(x, data.train.y, epochs=FLAGS.dense_epochs, **fit)
    dense_accuracy = model.evaluate(x_test, data.test.y, verbose=0, return_dict=True)["accuracy"]

    qualities = [float(q) for q in FLAGS.qualities]
    report = tf_lottery.sensitivity(model, (x_val, data.validation.y), qualities=qualities)
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    report.to_csv(os.path.join(FLAGS.out_dir, "sensitivity.csv"))
    report.plot(os.path.join(FLAGS.out_dir, "sensitivity.png"))
    per_layer = report.settings(FLAGS.max_drop)
    print(f"\n{report}\n\nPer-layer quality s within a drop of {FLAGS.max_drop}: {per_layer}\n")

    pruning = tf_lottery.IterativePruning(
        tf_lottery.StdThreshold(per_layer=per_layer, fixed_std=FLAGS.fixed_std),
        every=FLAGS.epochs_per_round,
        rounds=FLAGS.rounds,
        rewind=None,
        max_drop=FLAGS.max_drop,
        monitor="val_accuracy",
    )
    # The first boundary measures the dense baseline on the trained network.
    model.fit(
        x,
        data.train.y,
        epochs=(FLAGS.rounds + 1) * FLAGS.epochs_per_round,
        callbacks=[pruning],
        **fit,
    )
    pruned_accuracy = model.evaluate(x_test, data.test.y, verbose=0, return_dict=True)["accuracy"]
    result = tf_lottery.sparsity(model)
    print(f"\n{result}\n")
    for row in result.layers:
        print(f"{row.layer}: {row.total / max(row.surviving, 1):.1f}x compression")
    print(
        f"Overall: {result.total / result.surviving:.1f}x fewer weights ({1 - result.sparsity:.1%} left); "
        f"test accuracy {dense_accuracy:.2%} dense -> {pruned_accuracy:.2%} pruned."
    )


if __name__ == "__main__":
    app.run(main)
