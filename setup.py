"""Installs tf_lottery; `pip install .[test]` adds what the test suite needs."""

import re

from setuptools import find_packages
from setuptools import setup

version = re.search(r'__version__ = "([^"]+)"', open("tf_lottery/__init__.py").read()).group(1)

# Keras needs one backend; tf_lottery's core runs on any of them.
TENSORFLOW = ["tensorflow>=2.16"]
JAX = ["jax>=0.4.30"]
# PyPI's default torch wheel for Linux pulls several GB of CUDA; for a CPU-only
# machine install torch from its CPU index first (see the README).
TORCH = ["torch>=2.1"]
# Running and inspecting .tflite files needs LiteRT only; converting needs TensorFlow.
LITERT = ["ai-edge-litert>=2.0"]
EXPORT = TENSORFLOW + LITERT
EXAMPLES = ["mlxtend>=0.23", "matplotlib>=3.7"] + EXPORT
# examples/ray_sweep.py runs a sweep's seeds in parallel; tf_lottery never imports Ray.
SWEEPS = ["ray>=2.9"]
# KerasHub models (BERT, GPT-2, Llama, Gemma, built from tiny configs) are what the
# in-place, transformer-unit and one-shot tests prune; it brings tensorflow-text.
HUB = ["keras-hub>=0.32"]
# tensorflow-model-optimization is the reference that tests and benchmarks compare
# against; it runs on tf_keras and is never imported by tf_lottery itself.
REFERENCE = ["tensorflow-model-optimization>=0.8", "tf_keras>=2.16"]

setup(
    name="tf_lottery",
    version=version,
    description="Lottery-ticket and magnitude pruning for Keras 3, with sparse TFLite export.",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tf_lottery", "tf_lottery.*"]),
    # The command's entry point, outside the package so that `--help`, `inspect`
    # and `eval` do not import Keras (see tf_lottery_cli.py).
    py_modules=["tf_lottery_cli"],
    python_requires=">=3.10",
    install_requires=["keras>=3.4", "absl-py", "numpy"],
    extras_require={
        "tensorflow": TENSORFLOW,
        "jax": JAX,
        "torch": TORCH,
        "litert": LITERT,
        "export": EXPORT,
        "examples": EXAMPLES,
        "sweeps": SWEEPS,
        "reference": REFERENCE,
        # tensorboard: keras.callbacks.TensorBoard (and so tfmot's PruningSummaries) needs
        # it to write metrics, and TensorFlow no longer installs it. pytest-xdist: the README's
        # `-n 2` (two processes: 22 -> 13-14 minutes for the three backends on two cores).
        "test": EXAMPLES
        + REFERENCE
        + HUB
        + JAX
        + TORCH
        + ["pytest>=7", "pytest-xdist>=3", "hypothesis>=6", "tensorboard"],
    },
    entry_points={"console_scripts": ["tf-lottery=tf_lottery_cli:main"]},
    license="Apache-2.0",
)
