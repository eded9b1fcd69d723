"""How reliably a measured LiteRT latency target is met: the search, then a second look.

The small CNN of examples/models.py (conv 32, conv 64, fc 128, out 10; random
weights, BatchNormalization statistics set) is pruned with
`tf_lottery.UnitNorm()` to `Target(latency=...)`, several times. After each
prune the shrunk model is timed again, as a user checking the result would, both
ways. Two ways of timing are compared in the same run, trial after trial in
turn, for the search and for the second look:

- "paired": what `Target` does, the candidate and the dense model timed in
  alternating pairs by `tf_lottery.LatencyMeter` until the ratio is known to 2%;
- "alone": each model timed on its own (`tf_lottery.litert_latency`, the median of
  5 repeats of 50 calls) and divided by the dense model's time measured at the
  start: how `Target` timed before.

A trial is reliable when the second look agrees with the search: it says the
target is met (within the 5% tolerance). With `UnitNorm()` (no `round_to`) the
search can stop right at the target, so the noise of the timing decides.

`--busy=2` adds the kind of load a shared machine has: two processes that
alternate bursts of numpy work and pauses of random length (0.05-0.5 s each).

    python benchmarks/latency_target.py [--trials=3 --latency=0.5 --busy=2]
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
)

import multiprocessing  # noqa: E402
import time  # noqa: E402

# First: tf_lottery loads Keras with TensorFlow's start-up logs kept out of the output.
import tf_lottery  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from machine import cpu_name  # noqa: E402
from models import small_cnn  # noqa: E402
from tf_lottery.export.capture import captured_output  # noqa: E402

flags.DEFINE_integer("trials", 3, "Prunes per way of timing.")
flags.DEFINE_float("latency", 0.5, "The target, a fraction of the dense model's latency.")
flags.DEFINE_integer("busy", 0, "Processes of bursty load beside the timings.")
FLAGS = flags.FLAGS


class AloneMeter:
    """Times each model on its own against the dense time measured once: the old way."""

    def __init__(self, reference, target):
        self.target = target
        self.dense = tf_lottery.litert_latency(
            reference, repeats=target.repeats, invokes=target.invokes
        )

    def ms(self, repeats=5):
        return self.dense

    def ratio(self, model):
        ms = tf_lottery.litert_latency(
            model, repeats=self.target.repeats, invokes=self.target.invokes
        )
        self.last = (ms / self.dense, float("nan"), float("nan"), 0)
        return ms / self.dense


class AloneTarget(tf_lottery.Target):
    def meter(self, reference):
        return AloneMeter(reference, self)


def bursts(seed):
    """Load that comes and goes: numpy work and pauses of random length, forever."""
    rng = np.random.default_rng(seed)
    a = rng.random((256, 256))
    while True:
        until = time.perf_counter() + rng.uniform(0.05, 0.5)
        while time.perf_counter() < until:
            a = np.tanh(a @ a)
        time.sleep(rng.uniform(0.05, 0.5))


def model_with_statistics():
    """The small CNN, wrapped, with BatchNormalization statistics of random images."""
    keras.utils.set_random_seed(0)
    model = small_cnn()
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.5, channels).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, channels).astype("float32"))
    return tf_lottery.wrap(model)


def trial(way):
    target_class = tf_lottery.Target if way == "paired" else AloneTarget
    target = target_class(latency=FLAGS.latency)
    model = model_with_statistics()
    start = time.perf_counter()
    with captured_output():
        tf_lottery.prune(model, tf_lottery.UnitNorm(), target=target)
    seconds = time.perf_counter() - start
    paired = tf_lottery.target_report(model, tf_lottery.Target(latency=FLAGS.latency))
    alone = tf_lottery.target_report(model, AloneTarget(latency=FLAGS.latency))
    return paired, alone, seconds


def share(report):
    return report.achieved / report.dense


def main(argv):
    del argv
    busy = [
        multiprocessing.Process(target=bursts, args=(i,), daemon=True) for i in range(FLAGS.busy)
    ]
    for process in busy:
        process.start()
    print(
        f"CPU: {cpu_name()}, load average {os.getloadavg()[0]:.1f}; small CNN, random weights "
        f"and BN statistics; Target(latency={FLAGS.latency}), UnitNorm(); "
        f"no training data; {FLAGS.busy} processes of bursty load beside it"
    )
    print(
        "\n| search timed | trial | second look, paired (95% interval) | met | second look, "
        "alone | met | dense ms | prune s |"
    )
    print("| --- | ---: | --- | --- | --- | --- | ---: | ---: |")
    met = {(way, look): 0 for way in ("paired", "alone") for look in ("paired", "alone")}
    for index in range(FLAGS.trials):
        for way in ("paired", "alone") if index % 2 == 0 else ("alone", "paired"):
            paired, alone, seconds = trial(way)
            met[way, "paired"] += paired.meets
            met[way, "alone"] += alone.meets
            low, high = (x / paired.dense for x in paired.interval)
            print(
                f"| {way} | {index + 1} | {share(paired):.1%} ({low:.1%}-{high:.1%}) | "
                f"{'yes' if paired.meets else 'NO'} | {share(alone):.1%} | "
                f"{'yes' if alone.meets else 'NO'} | {paired.dense:.3f} | {seconds:.1f} |",
                flush=True,
            )
    print()
    for (way, look), count in met.items():
        print(f"search timed {way}, second look {look}: met in {count} of {FLAGS.trials} trials")
    for process in busy:
        process.terminate()


if __name__ == "__main__":
    app.run(main)
