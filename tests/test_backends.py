"""What crosses backends: imports, and models moved from JAX or PyTorch to TensorFlow."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import tf_lottery as tl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(backend, code, tmp_path):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# Each test starts fresh Python processes.
pytestmark = pytest.mark.slow


def _needs(module):
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None, reason=f"{module} is not installed"
    )


@pytest.mark.parametrize(
    "backend",
    [pytest.param("jax", marks=_needs("jax")), pytest.param("torch", marks=_needs("torch"))],
)
def test_import_tf_lottery_does_not_import_tensorflow(backend, tmp_path):
    out = _run(
        backend,
        """
        import sys
        import tf_lottery
        import keras
        print(keras.backend.backend(), "tensorflow" in sys.modules)
        """,
        tmp_path,
    )
    assert out.split() == [backend, "False"]


_TRAIN_AND_SAVE = """
import numpy as np
import keras
import tf_lottery as tl

keras.utils.set_random_seed(0)
inputs = keras.Input((8, 8, 1))
h = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
h = keras.layers.BatchNormalization()(h)
h = keras.layers.Flatten()(h)
outputs = keras.layers.Dense(3)(h)
model = tl.wrap(keras.Model(inputs, outputs))
model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 8, 8, 1)).astype("float32")
y = rng.integers(0, 3, size=64)
model.fit(x, y, epochs=2, batch_size=16, verbose=0,
          callbacks=[tl.IterativePruning(tl.PruneFraction(0.5), verbose=0)])
model.save("model.keras")
np.save("x.npy", x)
np.save("predictions.npy", keras.ops.convert_to_numpy(model.predict(x, verbose=0)))
print(round(tl.sparsity(model).sparsity, 4))
"""


@pytest.mark.tensorflow
@pytest.mark.parametrize(
    "backend",
    [pytest.param("jax", marks=_needs("jax")), pytest.param("torch", marks=_needs("torch"))],
)
def test_a_model_pruned_on_another_backend_loads_and_exports_on_tensorflow(backend, tmp_path):
    sparsity = float(_run(backend, _TRAIN_AND_SAVE, tmp_path))
    assert sparsity > 0.3
    # compile=False: the saved optimizer is the other backend's class, whose import would
    # load that backend (and, for a CUDA build of torch, its libraries) into this process.
    model = tl.load_model(str(tmp_path / "model.keras"), compile=False)
    assert tl.sparsity(model).sparsity == pytest.approx(sparsity, abs=1e-4)
    x = np.load(tmp_path / "x.npy")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model.predict(x, verbose=0)),
        np.load(tmp_path / "predictions.npy"),
        atol=1e-4,
    )
    report = tl.export_tflite(model, str(tmp_path / "model.tflite"))
    assert report.delegate_ok and report.verification, report
    outputs = tl.run_tflite(str(tmp_path / "model.tflite"), x)
    np.testing.assert_allclose(outputs, np.load(tmp_path / "predictions.npy"), atol=1e-4)


@pytest.mark.skipif(keras.backend.backend() == "tensorflow", reason="checks the other backends")
def test_export_on_another_backend_says_in_one_line_what_to_do(tmp_path):
    model = tl.wrap(
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    )
    with pytest.raises(tl.ExportError, match=r"KERAS_BACKEND=tensorflow tf-lottery export") as info:
        tl.export_tflite(model, str(tmp_path / "m.tflite"))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "m.tflite").exists()
