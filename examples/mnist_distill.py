"""What distillation buys after structured pruning: a CNN with most of its units removed.

A dense network (`--model`: LeNet-5, or the CNN with BatchNormalization of
mnist_structured.py) is trained (the teacher). A copy loses `--units` of every
layer's units at once by `UnitNorm`, is shrunk to a smaller dense model, and is
then fine-tuned for `--epochs` epochs twice from the same start, the same steps
in the same data order: on the labels alone, and with `tf_lottery.Distillation`
against the dense teacher. `--labelled` fine-tunes on that fraction of the
training images only (the teacher saw them all). Test accuracy of each, for
every seed in `--seeds`.

    python examples/mnist_distill.py                  # offline defaults, ~4 min on 2 CPUs
    python examples/mnist_distill.py --model=cnn --units=0.9 --seeds=0,1,2
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from models import classifier_compile_kwargs  # noqa: E402
from models import lenet5  # noqa: E402
from models import small_cnn  # noqa: E402
import mnist  # noqa: E402
import numpy as np  # noqa: E402

import tf_lottery  # noqa: E402
import keras  # noqa: E402

MODELS = {"lenet5": lenet5, "cnn": small_cnn}

flags.DEFINE_enum("model", "lenet5", list(MODELS), "The teacher: LeNet-5, or the BN CNN.")
flags.DEFINE_float("units", 0.85, "Fraction of every layer's units removed at once (UnitNorm).")
flags.DEFINE_integer("dense_epochs", 6, "Training epochs of the dense teacher.")
flags.DEFINE_integer("epochs", 4, "Fine-tuning epochs of the shrunk model.")
flags.DEFINE_float("temperature", 2.0, "Distillation temperature T.")
flags.DEFINE_float("alpha", 0.5, "Weight of the distillation term.")
flags.DEFINE_float(
    "labelled", 1.0, "Fraction of the training images the shrunk model is fine-tuned on."
)
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds to run.")
flags.adopt_module_key_flags(mnist)
FLAGS = flags.FLAGS


def _images(split):
    return split.x[..., None], split.y


def _fine_tune(model, teacher, train, epochs, distill):
    model.compile(**classifier_compile_kwargs(FLAGS.learning_rate))
    trainee = model
    if distill:
        trainee = tf_lottery.Distillation(model, teacher, FLAGS.temperature, FLAGS.alpha)
        trainee.compile(**classifier_compile_kwargs(FLAGS.learning_rate))
    trainee.fit(*train, epochs=epochs, batch_size=FLAGS.batch_size, verbose=0)
    return model


def _accuracy(model, test):
    model.compile(**classifier_compile_kwargs(FLAGS.learning_rate))
    return model.evaluate(*test, verbose=0)[1]


def run(seed, data):
    keras.utils.set_random_seed(seed)
    train, test = _images(data.train), _images(data.test)
    teacher = MODELS[FLAGS.model]()
    teacher.compile(**classifier_compile_kwargs(FLAGS.learning_rate))
    teacher.fit(*train, epochs=FLAGS.dense_epochs, batch_size=FLAGS.batch_size, verbose=0)
    pruned = tf_lottery.wrap(teacher)
    tf_lottery.prune(pruned, tf_lottery.UnitNorm(FLAGS.units))
    start = tf_lottery.shrink(pruned)
    row = {
        "seed": seed,
        "dense": _accuracy(teacher, test),
        "params": (start.count_params(), teacher.count_params()),
        "shrunk, no training": _accuracy(start, test),
    }
    chosen = np.random.default_rng(seed).permutation(len(train[1]))
    chosen = chosen[: max(1, round(FLAGS.labelled * len(chosen)))]
    fine_tuning = (train[0][chosen], train[1][chosen])
    for name, distill in (("labels only", False), ("distilled", True)):
        student = keras.models.clone_model(start)
        student.set_weights(start.get_weights())
        keras.utils.set_random_seed(seed)  # the same data order for both
        _fine_tune(student, teacher, fine_tuning, FLAGS.epochs, distill)
        row[name] = _accuracy(student, test)
    return row


def main(argv):
    del argv
    data = mnist.load()
    rows = [run(int(seed), data) for seed in FLAGS.seeds]
    small, full = rows[0]["params"]
    print(
        f"\n{FLAGS.model}, {FLAGS.units:.0%} of every layer's units removed: {small:,} of "
        f"{full:,} parameters; fine-tuned {FLAGS.epochs} epochs on {FLAGS.labelled:.0%} of the "
        f"training images (T={FLAGS.temperature}, alpha={FLAGS.alpha})"
    )
    columns = ["dense", "shrunk, no training", "labels only", "distilled"]
    print(f"{'seed':>4}  " + "  ".join(f"{c:>19}" for c in columns))
    for row in rows:
        print(f"{row['seed']:>4}  " + "  ".join(f"{row[c]:>19.2%}" for c in columns))
    gain = [r["distilled"] - r["labels only"] for r in rows]
    print(
        f"distilled - labels only: mean {np.mean(gain):+.2%} "
        f"(min {min(gain):+.2%}, max {max(gain):+.2%}) over {len(rows)} seeds"
    )


if __name__ == "__main__":
    app.run(main)
