"""One process of test_lottery's multi-process test: seeds of a tiny sweep into a shared out_dir.

python tests/sweep_worker.py OUT_DIR SEED [SEED ...]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import data  # noqa: E402
from conftest import mlp  # noqa: E402

import keras  # noqa: E402

import tf_lottery as tl  # noqa: E402

COMPILE = dict(
    optimizer="adam",
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)


def build():
    return mlp()


def sweep(out_dir, seeds, **kwargs):
    """The sweep both the worker processes and the test's reference run."""
    x, y = data(192)
    return tl.find_winning_ticket(
        build,
        (x[:128], y[:128]),
        validation_data=(x[128:160], y[128:160]),
        test_data=(x[160:], y[160:]),
        criterion=tl.PruneFraction(0.5),
        rounds=1,
        epochs_per_round=1,
        controls=("reinit",),
        out_dir=out_dir,
        seeds=seeds,
        compile_kwargs=COMPILE,
        fit_kwargs={"batch_size": 32},
        verbose=0,
        **kwargs,
    )


if __name__ == "__main__":
    sweep(sys.argv[1], tuple(int(s) for s in sys.argv[2:]))
    print("done", flush=True)
