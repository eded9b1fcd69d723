"""Perplexity of a small byte-level language model pruned in one shot.

The corpus is Python's own standard library: the top-level `.py` files of the
running interpreter's `stdlib` directory, read as bytes (a vocabulary of 256).
Every 8th file, in sorted order, is held out for evaluation. A causal
transformer (pre-norm blocks of MultiHeadAttention and a GELU feed-forward
pair) trains for `--train_steps` (about a minute on 2 cores) on the rest; then each one-shot method
prunes a copy of it, with the embedding and the output head left dense as in
the papers, and the held-out perplexity is measured:

- dense;
- 50% unstructured: magnitude (one ranking per layer, as the papers' baseline),
  Wanda, SparseGPT;
- 2:4: magnitude (the two largest of every four inputs of each output),
  Wanda, SparseGPT.

Calibration: `--calibration` training sequences, as the papers take 128 from
C4. Wanda's advantage over magnitude comes from the outlier features of models
with billions of parameters; at this size magnitude and Wanda can be close.

    python benchmarks/oneshot_lm.py [--seeds=0,1 --train_steps=1500]
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import glob  # noqa: E402
import sysconfig  # noqa: E402
import time  # noqa: E402

# First: tf_lottery loads Keras with TensorFlow's start-up logs kept out of the output.
import tf_lottery  # noqa: E402
import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from machine import cpu_name  # noqa: E402
from tf_lottery.oneshot import OneShotCriterion  # noqa: E402
from transformer import blocks as transformer_blocks  # noqa: E402
from tf_lottery.oneshot import wanda_pruned  # noqa: E402


flags.DEFINE_list("seeds", ["0", "1"], "Seeds: one trained model each.")
flags.DEFINE_integer("train_steps", 1500, "Training steps of 32 sequences per seed.")
flags.DEFINE_integer("width", 128, "Model width (d_model).")
flags.DEFINE_integer("blocks", 2, "Transformer blocks.")
flags.DEFINE_integer("heads", 4, "Attention heads.")
flags.DEFINE_integer("context", 64, "Positions per sequence.")
flags.DEFINE_integer("calibration", 128, "Calibration sequences.")
flags.DEFINE_integer("eval_sequences", 512, "Held-out sequences for perplexity.")
FLAGS = flags.FLAGS


def corpus():
    """(training bytes, held-out bytes) from the standard library's top-level files."""
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    parts = ([], [])
    for index, path in enumerate(files):
        with open(path, "rb") as file:
            parts[index % 8 == 0].append(np.frombuffer(file.read(), np.uint8))
    return tuple(np.concatenate(p).astype("int32") for p in parts), len(files)


def windows(tokens, count, context, rng):
    """`count` random windows of `context + 1` bytes: inputs and next-byte targets."""
    starts = rng.integers(0, len(tokens) - context - 1, size=count)
    chunks = np.stack([tokens[s : s + context + 1] for s in starts])
    return chunks[:, :-1], chunks[:, 1:]


def language_model(width, blocks, heads, context):
    """A pre-norm causal transformer over bytes; the head is named lm_head."""
    inputs = keras.Input((context,), dtype="int32")
    x = keras_hub.layers.TokenAndPositionEmbedding(256, context, width, name="embedding")(inputs)
    x = transformer_blocks(x, blocks, heads)
    x = keras.layers.LayerNormalization()(x)
    return keras.Model(inputs, keras.layers.Dense(256, name="lm_head")(x))


class MagnitudeAlongInputs(OneShotCriterion):
    """2:4 by magnitude: the n largest |w| of every m consecutive inputs of each output.

    Wanda's rule with every feature norm equal, so that the groups run along
    the same (contracted) axes as Wanda's and SparseGPT's, also in the
    attention kernels.
    """

    def prune_matrix(self, weight, statistics, alive):
        ones = np.ones(weight.shape[1])
        return wanda_pruned(weight, ones, self.sparsity, self.n_m, alive)


def compiled(model):
    model.compile(
        keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model


def trained(seed, train, rng):
    """The dense model of `seed`, trained on windows of `train` drawn from `rng`."""
    model = compiled(language_model(FLAGS.width, FLAGS.blocks, FLAGS.heads, FLAGS.context))
    x, y = windows(train, 32 * FLAGS.train_steps, FLAGS.context, rng)
    start = time.perf_counter()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    print(f"seed {seed}: trained in {time.perf_counter() - start:.0f} s", flush=True)
    return model


def copy_of(model):
    """A copy with `model`'s weights: `wrap` works in place on this model (its
    KerasHub embedding holds layers inside), and each method prunes its own."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def methods(calibration):
    return {
        "magnitude 50%": tf_lottery.PruneFraction(0.5, output_rate=0.5),
        "Wanda 50%": tf_lottery.Wanda(0.5, data=calibration, batch_size=32),
        "SparseGPT 50%": tf_lottery.SparseGPT(0.5, data=calibration, batch_size=32),
        "magnitude 2:4": MagnitudeAlongInputs(data=calibration[:1], n_m=(2, 4)),
        "Wanda 2:4": tf_lottery.Wanda(data=calibration, n_m=(2, 4), batch_size=32),
        "SparseGPT 2:4": tf_lottery.SparseGPT(data=calibration, n_m=(2, 4), batch_size=32),
    }


def perplexity(model, x, y):
    logits = model.predict(x, batch_size=128, verbose=0)
    loss = keras.ops.convert_to_numpy(
        keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
    )
    return float(np.exp(loss.mean()))


def main(argv):
    del argv
    (train, held_out), files = corpus()
    print(
        f"{cpu_name()}, {os.cpu_count()} CPUs, Keras {keras.__version__} "
        f"({keras.backend.backend()}). Corpus: {files} top-level stdlib files, "
        f"{len(train):,} training and {len(held_out):,} held-out bytes. Model: "
        f"{FLAGS.blocks} blocks, width {FLAGS.width}, {FLAGS.heads} heads, context "
        f"{FLAGS.context}; {FLAGS.train_steps} training steps of 32 sequences per seed.\n"
    )
    results = {}
    for seed in (int(s) for s in FLAGS.seeds):
        keras.utils.set_random_seed(seed)
        rng = np.random.default_rng(seed)
        model = trained(seed, train, rng)
        eval_x, eval_y = windows(held_out, FLAGS.eval_sequences, FLAGS.context, rng)
        calibration, _ = windows(train, FLAGS.calibration, FLAGS.context, rng)
        results.setdefault("dense", []).append((perplexity(model, eval_x, eval_y), 0.0))
        for name, criterion in methods(calibration).items():
            pruned = tf_lottery.wrap(copy_of(model), exclude=["embedding", "lm_head"], keep="masks")
            start = time.perf_counter()
            tf_lottery.prune(pruned, criterion)
            seconds = time.perf_counter() - start
            results.setdefault(name, []).append((perplexity(pruned, eval_x, eval_y), seconds))
            print(f"seed {seed}: {name}: {results[name][-1][0]:.3f} ({seconds:.1f} s)", flush=True)
        keras.backend.clear_session()
    seeds = ", ".join(FLAGS.seeds)
    print(f"\n| method | held-out perplexity, seeds {seeds} | range | prune seconds (mean) |")
    print("| --- | ---: | ---: | ---: |")
    for name, values in results.items():
        ppl = [v[0] for v in values]
        each = ", ".join(f"{p:.2f}" for p in ppl)
        seconds = np.mean([v[1] for v in values])
        print(f"| {name} | {each} | {min(ppl):.2f} – {max(ppl):.2f} | {seconds:.1f} |")


if __name__ == "__main__":
    app.run(main)
