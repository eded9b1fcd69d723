"""Attention heads and feed-forward units removed from a small byte-level language model.

The corpus, the model and its training are those of `oneshot_lm.py` (Python's own
standard library read as bytes, a pre-norm causal transformer; its flags apply).
For each seed the dense model is trained, then for each criterion (`UnitNorm`,
`UnitActivation` on `--calibration` training sequences) and each rate (25% and
50% of the heads of every attention layer and of the hidden units of every
feed-forward pair) a copy is pruned in one round and shrunk (`tf_lottery.shrink`,
whose predictions are the pruned model's), and the held-out perplexity is
measured as it is ("none"), after `--distill_steps` steps of fine-tuning on the
labels alone ("labels"), and after as many steps of distillation from the dense
model ("distilled": `tf_lottery.Distillation`, T = 2, alpha = 0.9). Both
fine-tunings start from the same shrunk weights and see the same batches in the
same order, with the same optimizer (Adam, 1e-3) and batch size (32). The
embedding and the output head stay.

LiteRT latency: one fixed-length forward pass (`--context` positions, batch 1,
1 thread) of the dense and the shrunk models of the first seed, float and int8
(dynamic-range weights): the shrunk shapes are the same for both criteria.

    python benchmarks/structured_lm.py [--seeds=0,1 --train_steps=1500 --distill_steps=200]
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tempfile  # noqa: E402
import time  # noqa: E402

import tf_lottery  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from machine import cpu_name  # noqa: E402
from oneshot_lm import compiled  # noqa: E402
from oneshot_lm import copy_of  # noqa: E402
from oneshot_lm import corpus  # noqa: E402
from oneshot_lm import perplexity  # noqa: E402
from oneshot_lm import trained  # noqa: E402
from oneshot_lm import windows  # noqa: E402
from tflite_bench import latencies  # noqa: E402

flags.DEFINE_integer(
    "distill_steps", 200, "Fine-tuning steps of 32 sequences per model, on labels and distilled."
)
flags.DEFINE_list("rates", ["0.25", "0.5"], "Fractions of heads and hidden units removed.")
FLAGS = flags.FLAGS


def criteria(rate, calibration):
    return {
        "UnitNorm": tf_lottery.UnitNorm(rate),
        "UnitActivation": tf_lottery.UnitActivation(rate, data=calibration, batch_size=32),
    }


def fine_tune(model, x, y):
    """One pass over `x`, `y` in their order: the same steps for every arm."""
    compiled(model).fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)


def recovered(small, dense, x, y):
    """Copies of `small` fine-tuned on the labels alone and distilled from `dense`."""
    labels = copy_of(small)
    fine_tune(labels, x, y)
    distilled = copy_of(small)
    fine_tune(tf_lottery.Distillation(distilled, copy_of(dense), temperature=2.0, alpha=0.9), x, y)
    return {"labels": labels, "distilled": distilled}


def export(model, folder, name, quantize, data):
    path = os.path.join(folder, f"{name}.tflite")
    tf_lottery.export_tflite(model, path, quantize=quantize, representative_data=data, shrink=False)
    return path


def main(argv):
    del argv
    (train, held_out), files = corpus()
    print(
        f"{cpu_name()}, {os.cpu_count()} CPUs, Keras {keras.__version__} "
        f"({keras.backend.backend()}). Corpus: {files} top-level stdlib files. Model: "
        f"{FLAGS.blocks} blocks, width {FLAGS.width}, {FLAGS.heads} heads, context "
        f"{FLAGS.context}; {FLAGS.train_steps} training and {FLAGS.distill_steps} "
        "fine-tuning steps of 32 sequences.\n"
    )
    start = time.perf_counter()
    results, params, latency = {}, {}, {}
    folder = tempfile.mkdtemp()
    for seed_index, seed in enumerate(int(s) for s in FLAGS.seeds):
        keras.utils.set_random_seed(seed)
        rng = np.random.default_rng(seed)
        dense = trained(seed, train, rng)
        eval_x, eval_y = windows(held_out, FLAGS.eval_sequences, FLAGS.context, rng)
        calibration, _ = windows(train, FLAGS.calibration, FLAGS.context, rng)
        distill_x, distill_y = windows(train, 32 * FLAGS.distill_steps, FLAGS.context, rng)
        results.setdefault(("dense", "", "—"), []).append(perplexity(dense, eval_x, eval_y))
        params["dense"] = dense.count_params()
        shrunk_for_latency = {"dense": dense}
        for rate in (float(r) for r in FLAGS.rates):
            for name, criterion in criteria(rate, calibration).items():
                # A copy: the embedding holds layers inside, so wrap() works in place.
                pruned = tf_lottery.wrap(
                    copy_of(dense), exclude=["embedding", "lm_head"], keep="masks"
                )
                tf_lottery.prune(pruned, criterion)
                small = tf_lottery.shrink(pruned)
                params[f"{rate:.0%}"] = small.count_params()
                measured = {"none": perplexity(small, eval_x, eval_y)}
                for arm, model in recovered(small, dense, distill_x, distill_y).items():
                    measured[arm] = perplexity(model, eval_x, eval_y)
                for arm, value in measured.items():
                    results.setdefault((name, rate, arm), []).append(value)
                print(
                    f"seed {seed}: {name} {rate:.0%}: "
                    + ", ".join(f"{arm} {value:.3f}" for arm, value in measured.items())
                    + f" ({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
                shrunk_for_latency.setdefault(f"{rate:.0%}", small)
        if seed_index == 0:
            data = calibration[:16]
            for label, model in shrunk_for_latency.items():
                paths = [export(model, folder, f"{label}-{q}", q, data) for q in (None, "dynamic")]
                latency[label] = latencies(paths, FLAGS.repeats, FLAGS.invokes)
        keras.backend.clear_session()
    seeds = ", ".join(FLAGS.seeds)
    print(f"\n| units removed | criterion | fine-tuning | perplexity, seeds {seeds} | range |")
    print("| --- | --- | --- | ---: | ---: |")
    for (name, rate, arm), values in results.items():
        each = ", ".join(f"{v:.2f}" for v in values)
        removed = f"{rate:.0%}" if rate != "" else "none"
        print(f"| {removed} | {name} | {arm} | {each} | {min(values):.2f} – {max(values):.2f} |")
    print("\n| units removed | criterion | distilled − labels, per seed |")
    print("| --- | --- | ---: |")
    for (name, rate, arm), values in results.items():
        if arm == "distilled":
            labels = results[(name, rate, "labels")]
            each = ", ".join(f"{d - b:+.2f}" for d, b in zip(values, labels))
            print(f"| {rate:.0%} | {name} | {each} |")
    print("\n| model | parameters | LiteRT float µs | LiteRT int8 µs |")
    print("| --- | ---: | ---: | ---: |")
    for label, (float_us, int8_us) in latency.items():
        print(f"| {label} | {params[label]:,} | {float_us:.0f} | {int8_us:.0f} |")
    print(f"\n{time.perf_counter() - start:.0f} s in all; load average {os.getloadavg()}")


if __name__ == "__main__":
    app.run(main)
