"""What `import tf_lottery` loads and prints: each in a fresh interpreter (docs/imports.md)."""

import importlib.util
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import tf_lottery as tl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(tl.__file__)))

# Put first on PYTHONPATH, this makes importing any backend fail, as it does
# where only tf_lottery[litert] is installed.
NO_BACKEND = """
import sys

class _NoBackend:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "jax", "jaxlib", "torch"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, _NoBackend())
"""


def run_python(code, *, env=None, pythonpath=(), args=()):
    """Runs `code` in a new interpreter on this checkout: the CompletedProcess."""
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    environment.update(env or {})
    environment["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), ROOT])
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
    )


def no_backend_path(tmp_path):
    """A folder whose sitecustomize.py makes every Keras backend unimportable."""
    folder = tmp_path / "no_backend"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(NO_BACKEND)
    return folder


def test_every_public_name_is_in_one_half_and_resolves():
    lite = {"run_tflite", "inspect_tflite", "TFLiteReport", "ExportReport"}
    assert set(tl.__all__) == lite | tl._KERAS_NAMES and not lite & tl._KERAS_NAMES
    for name in tl.__all__:
        assert getattr(tl, name).__name__ == name, name  # functions, not same-named modules
    assert set(tl.__all__) <= set(dir(tl))


@pytest.mark.slow  # a new interpreter
def test_import_tf_lottery_then_keras_load_model_finds_the_wrappers(tmp_path):
    # Keras' deserializer imports only Keras' own packages: `import tf_lottery`
    # must have registered PruneWrapper by itself.
    model = tl.wrap(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="fc")]))
    model.save(tmp_path / "wrapped.keras")
    result = run_python(
        "import sys, tf_lottery, keras\n"
        "model = keras.models.load_model(sys.argv[1])\n"
        "print(type(model.layers[0]).__name__)\n",
        args=[tmp_path / "wrapped.keras"],
        env={"KERAS_BACKEND": keras.backend.backend()},
    )
    assert result.stdout == "PruneWrapper\n", result.stderr[-2000:]


@pytest.mark.slow  # new interpreters
@pytest.mark.tensorflow
def test_without_a_backend_tflite_files_run_and_the_keras_half_says_what_to_install(tmp_path):
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="fc")])
    x = np.random.default_rng(0).normal(size=(10, 6)).astype("float32")
    path = tl.export_tflite(model, tmp_path / "m.tflite", representative_data=x).path
    np.save(tmp_path / "x.npy", x)
    result = run_python(
        "import sys\n"
        "import numpy as np\n"
        "import tf_lottery\n"
        "path, x = sys.argv[1], np.load(sys.argv[2])\n"
        "np.save(sys.argv[3], tf_lottery.run_tflite(path, x))\n"
        "print(tf_lottery.inspect_tflite(path).tensors[0].shape)\n"
        "print('loaded:', [m for m in ('keras', 'tensorflow') if m in sys.modules])\n"
        "try:\n"
        "    tf_lottery.wrap\n"
        "except ImportError as error:\n"
        "    print('ImportError:', error)\n",
        pythonpath=[no_backend_path(tmp_path)],
        args=[path, tmp_path / "x.npy", tmp_path / "out.npy"],
    )
    lines = result.stdout.splitlines()
    assert lines[:2] == ["(4, 6)", "loaded: []"], result.stderr[-2000:]
    np.testing.assert_allclose(
        np.load(tmp_path / "out.npy"), model.predict(x, verbose=0), atol=1e-5
    )
    (error,) = lines[2:]
    assert error.startswith("ImportError: tf_lottery.wrap needs Keras with a backend")
    assert (
        "No module named 'tensorflow'" in error and "pip install 'tf_lottery[tensorflow]'" in error
    )
    assert "'tf_lottery[litert]'" in error


@pytest.mark.slow  # a new interpreter
@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="needs TensorFlow")
def test_tensorflow_prints_nothing_at_import_or_first_op_and_devices_stay_configurable():
    result = run_python(
        "import tf_lottery, keras\n"
        "print(keras.ops.convert_to_numpy(keras.ops.ones(3) + 1))\n"
        "import tensorflow as tf\n"
        # Raises once TensorFlow has initialized its devices.
        "tf.config.set_visible_devices(tf.config.list_physical_devices('CPU'), 'CPU')\n",
        env={"KERAS_BACKEND": "tensorflow"},
    )
    assert result.returncode == 0 and result.stdout == "[2. 2. 2.]\n", result.stderr[-2000:]
    assert result.stderr == ""


@pytest.mark.slow  # a new interpreter
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_set_random_seed_under_jax_and_torch_imports_tensorflow_quietly(backend):
    if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec(backend) is None:
        pytest.skip(f"needs TensorFlow and {backend}")
    # Keras seeds TensorFlow too whenever it is installed, importing it; Keras
    # looks TensorFlow up (find_spec) before that, under torch.
    result = run_python(
        "import sys, tf_lottery, keras\n"
        "keras.utils.set_random_seed(0)\n"
        "import tensorflow as tf\n"
        "print('tensorflow' in sys.modules, int(tf.reduce_sum(tf.ones(3))))\n",
        env={"KERAS_BACKEND": backend},
    )
    assert result.stdout == "True 3\n" and result.stderr == "", result.stderr[-2000:]
