"""Time and memory of a one-shot prune (Wanda, SparseGPT) as a transformer grows.

Models are stacks of pre-norm transformer blocks (MultiHeadAttention, then a
feed-forward Dense pair of 4x the width), never trained, fed random
calibration sequences of `--tokens` positions. For each width, one
`tf_lottery.prune` is timed and its memory measured two ways: the peak of
numpy allocations (tracemalloc) and the peak rise of the process's resident
memory (sampled every 2 ms). Beside them, what holding every pruned layer's
calibration inputs at once would take, which the streamed calibration never
does: it keeps one group's statistics (a d x d Gram matrix per kernel for
SparseGPT, a vector for Wanda) and one batch of activations.

    python benchmarks/oneshot_scaling.py [--widths=64,128,256 --blocks=2]
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import time  # noqa: E402
import tracemalloc  # noqa: E402

# First: tf_lottery loads Keras with TensorFlow's start-up logs kept out of the output.
import tf_lottery  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from machine import PeakResident  # noqa: E402
from machine import cpu_name  # noqa: E402
from transformer import blocks as transformer_blocks  # noqa: E402


flags.DEFINE_list("widths", ["64", "128", "256"], "Model widths (d_model).")
flags.DEFINE_integer("blocks", 2, "Transformer blocks.")
flags.DEFINE_integer("heads", 4, "Attention heads.")
flags.DEFINE_integer("tokens", 64, "Positions per calibration sequence.")
flags.DEFINE_integer("samples", 32, "Calibration sequences.")
FLAGS = flags.FLAGS

CRITERIA = {
    "Wanda 50%": lambda x: tf_lottery.Wanda(0.5, data=x),
    "SparseGPT 50%": lambda x: tf_lottery.SparseGPT(0.5, data=x),
    "SparseGPT 2:4": lambda x: tf_lottery.SparseGPT(data=x, n_m=(2, 4)),
}


def transformer(width, count, heads, tokens):
    """`count` blocks over (tokens, width) inputs (transformer.py)."""
    inputs = keras.Input((tokens, width))
    return keras.Model(inputs, transformer_blocks(inputs, count, heads))


def all_inputs_bytes(width, blocks):
    """Bytes of every pruned kernel's calibration inputs held at once (float32)."""
    per_block = 3 * width + width + width + 4 * width  # q, k, v; output; up; down
    return FLAGS.samples * FLAGS.tokens * blocks * per_block * 4


def main(argv):
    del argv
    print(
        f"{cpu_name()}, {os.cpu_count()} CPUs, Keras {keras.__version__} "
        f"({keras.backend.backend()}); {FLAGS.blocks} blocks, {FLAGS.heads} heads, "
        f"{FLAGS.samples} calibration sequences of {FLAGS.tokens} positions.\n"
    )
    print(
        "| width | prunable weights | criterion | seconds | numpy peak (MB) | "
        "resident peak rise (MB) | all layers' inputs at once (MB) |"
    )
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    rng = np.random.default_rng(0)
    for width in (int(w) for w in FLAGS.widths):
        keras.utils.set_random_seed(0)
        model = transformer(width, FLAGS.blocks, FLAGS.heads, FLAGS.tokens)
        x = rng.normal(size=(FLAGS.samples, FLAGS.tokens, width)).astype("float32")
        # Warm-up on one batch, so that the first criterion's figures leave out
        # the backend's one-time start-up.
        tf_lottery.prune(tf_lottery.wrap(model), tf_lottery.SparseGPT(data=x, samples=8))
        for name, make in CRITERIA.items():
            pruned = tf_lottery.wrap(model)
            count = tf_lottery.sparsity(pruned).total
            tracemalloc.start()
            with PeakResident() as resident:
                start = time.perf_counter()
                tf_lottery.prune(pruned, make(x))
                seconds = time.perf_counter() - start
            numpy_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            print(
                f"| {width} | {count:,} | {name} | {seconds:.2f} | {numpy_peak / 2**20:.1f} | "
                f"{(resident.peak - resident.start) / 2**20:.1f} | "
                f"{all_inputs_bytes(width, FLAGS.blocks) / 2**20:.1f} |",
                flush=True,
            )
            del pruned
        keras.backend.clear_session()


if __name__ == "__main__":
    app.run(main)
