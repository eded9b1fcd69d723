"""A structured lottery ticket on MNIST: whole filters and neurons go, the model shrinks.

A small CNN with BatchNormalization (conv 32 3x3 - BN - ReLU - pool, conv 64 3x3 -
BN - ReLU - pool, fc 128, out 10). Each round prunes 20% of the surviving filters
and neurons of every hidden layer by the L2 norm of their weights
(`tf_lottery.UnitNorm`, unit counts kept a multiple of --round_to), then trains
again. Two recipes run side by side from the same θ0:

- ticket: Frankle & Carbin, the survivors rewound to θ0 each round;
- han: Han et al.'s retraining, the survivors keep their trained values.

Then each recipe's last round is shrunk (`tf_lottery.shrink`: a plain, smaller
dense model), and both it and the dense network of round 0 are exported to
TFLite and timed in LiteRT: one thread, batch 1, medians of alternating repeats.

    python examples/mnist_structured.py                 # offline defaults, ~2 min on 2 CPUs
    python examples/mnist_structured.py --seed=1 --recipes=ticket
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import time  # noqa: E402

# First: tf_lottery loads Keras with TensorFlow's start-up logs kept out of the output.
import tf_lottery  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from models import classifier_compile_kwargs  # noqa: E402
from models import small_cnn  # noqa: E402
import mnist  # noqa: E402


RECIPES = {"ticket": "init", "han": None}  # recipe: find_winning_ticket's rewind
PRECISIONS = {"float32": None, "int8": "int8"}  # precision: export_tflite's quantize

flags.DEFINE_integer(
    "rounds", 4, "Pruning rounds; 4 rounds of 20% with --round_to=4 leave about half the units."
)
flags.DEFINE_integer("epochs_per_round", 4, "Training epochs in each round.")
flags.DEFINE_float("rate", 0.2, "Fraction of each layer's surviving units pruned per round.")
flags.DEFINE_integer("round_to", 4, "Keep each layer's unit count a multiple of this.")
flags.DEFINE_list("recipes", list(RECIPES), "ticket (rewind to θ0), han (no rewinding), or both.")
flags.DEFINE_list(
    "precisions", ["float32", "int8"], "TFLite files to export and time: float32, int8."
)
flags.DEFINE_integer("repeats", 7, "LiteRT timing: alternating repeats per model.")
flags.DEFINE_integer("invokes", 200, "LiteRT timing: invocations timed per repeat.")
flags.DEFINE_string(
    "out_dir",
    "runs/mnist_structured",
    "Folder for the runs: <out_dir>/<data>/seed_<seed>/<recipe>, and the .tflite files.",
)
flags.adopt_module_key_flags(mnist)  # --help lists the shared data flags too
FLAGS = flags.FLAGS


def accuracy(model, split):
    logits = model.predict(split.x[..., None], batch_size=500, verbose=0)
    return float(np.mean(np.argmax(logits, axis=1) == split.y))


def latencies(paths, repeats, invokes):
    """Median µs per invocation of each file: LiteRT, one thread, batch 1.

    The files take turns (A B A B ...), so a change in the machine's load hits
    every file alike; each repeat's median goes into the median over repeats.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreters = []
    for path in paths:
        interpreter = Interpreter(model_path=path, num_threads=1)
        interpreter.allocate_tensors()
        (inputs,) = interpreter.get_input_details()
        sample = np.random.default_rng(0).random(inputs["shape"]).astype(inputs["dtype"])
        interpreter.set_tensor(inputs["index"], sample)
        for _ in range(50):
            interpreter.invoke()
        interpreters.append(interpreter)
    samples = [[] for _ in paths]
    for _ in range(repeats):
        for interpreter, times in zip(interpreters, samples):
            each = []
            for _ in range(invokes):
                start = time.perf_counter()
                interpreter.invoke()
                each.append(time.perf_counter() - start)
            times.append(np.median(each))
    return [float(np.median(s)) * 1e6 for s in samples]


def run_recipe(recipe, data, out_dir, compile_kwargs):
    """The recipe's lottery run; returns its last round's trained, wrapped model."""
    criterion = tf_lottery.UnitNorm(FLAGS.rate, round_to=FLAGS.round_to)
    # Both recipes print their pruned arm as [ticket]: find_winning_ticket's name for it.
    print(f"\n{recipe}: {criterion}, rewind={RECIPES[recipe]!r}")
    tf_lottery.find_winning_ticket(
        small_cnn,
        (data.train.x[..., None], data.train.y),
        validation_data=(data.validation.x[..., None], data.validation.y),
        test_data=(data.test.x[..., None], data.test.y),
        criterion=criterion,
        rounds=FLAGS.rounds,
        epochs_per_round=FLAGS.epochs_per_round,
        rewind=RECIPES[recipe],
        out_dir=os.path.join(out_dir, recipe),
        seed=FLAGS.seed,
        compile_kwargs=compile_kwargs,
        fit_kwargs={"batch_size": FLAGS.batch_size},
    )
    return tf_lottery.load_round(
        small_cnn, os.path.join(out_dir, recipe), FLAGS.rounds, compile_kwargs=compile_kwargs
    )


def export(name, model, dense, data, folder):
    """Float32 and int8 files of `model`, with their test accuracy in Keras and LiteRT."""
    rows = []
    for quantize in (PRECISIONS[p] for p in FLAGS.precisions):
        path = os.path.join(folder, f"{name.split(',')[0].split()[0]}_{quantize or 'float'}.tflite")
        report = tf_lottery.export_tflite(
            model, path, quantize=quantize, representative_data=data.train.x[:300, ..., None]
        )
        outputs = tf_lottery.run_tflite(path, data.test.x[..., None])
        rows.append(
            {
                "name": name,
                "quantize": quantize or "float32",
                "path": path,
                "size": report.size,
                "macs": tf_lottery.shrink_report(dense, model).macs_after,
                "keras": accuracy(model, data.test),
                "litert": float(np.mean(np.argmax(outputs, axis=1) == data.test.y)),
            }
        )
    return rows


def main(argv):
    del argv
    data = mnist.load()
    for name, given, known in (
        ("recipes", FLAGS.recipes, RECIPES),
        ("precisions", FLAGS.precisions, PRECISIONS),
    ):
        if not given or any(g not in known for g in given):
            raise app.UsageError(f"--{name} takes some of {list(known)}. Received: {given}")
    out_dir = os.path.join(FLAGS.out_dir, data.name, f"seed_{FLAGS.seed}")
    compile_kwargs = classifier_compile_kwargs(FLAGS.learning_rate)
    finals = {recipe: run_recipe(recipe, data, out_dir, compile_kwargs) for recipe in FLAGS.recipes}
    # Round 0, the dense network, is the same in both recipes: same θ0, seed and data.
    dense = tf_lottery.strip(
        tf_lottery.load_round(
            small_cnn, os.path.join(out_dir, FLAGS.recipes[0]), 0, compile_kwargs=compile_kwargs
        )
    )
    rows = export("dense (round 0)", dense, dense, data, out_dir)
    for recipe, model in finals.items():
        print(f"\n{recipe}, round {FLAGS.rounds}, shrunk:")
        small = tf_lottery.shrink(model, verbose=1)
        rows += export(f"{recipe}, shrunk", small, dense, data, out_dir)

    times = latencies([r["path"] for r in rows], FLAGS.repeats, FLAGS.invokes)
    print(
        f"\nTest accuracy on {len(data.test.y):,} images (one image is "
        f"{100 / len(data.test.y):.1f} point) after each round's last epoch. LiteRT: one "
        f"thread, batch 1, median of {FLAGS.repeats} alternating repeats of {FLAGS.invokes} "
        "invocations; size and speed against the dense file of the same precision.\n"
    )
    print("| model | TFLite | MACs | Keras acc | LiteRT acc | file bytes | size | µs | speed-up |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    dense_rows = {
        r["quantize"]: (r, t) for r, t in zip(rows, times) if r["name"] == rows[0]["name"]
    }
    for row, latency in zip(rows, times):
        base, base_time = dense_rows[row["quantize"]]
        print(
            f"| {row['name']} | {row['quantize']} | {row['macs']:,} | {row['keras']:.2%} | "
            f"{row['litert']:.2%} | {row['size']:,} | {row['size'] / base['size']:.0%} | "
            f"{latency:.1f} | {base_time / latency:.2f}x |"
        )


if __name__ == "__main__":
    app.run(main)
