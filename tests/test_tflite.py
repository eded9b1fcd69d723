"""TFLite export: files LiteRT loads, that match Keras, written atomically."""

import io
import os
import subprocess
import sys
import contextlib

import keras
import numpy as np
import pytest

import tf_lottery as tl
from tf_lottery import tflite

pytestmark = pytest.mark.tensorflow

L = keras.layers


def pruned_mlp(block, sizes=(64, 48, 32, 10), rate=0.5, rounds=4):
    keras.utils.set_random_seed(0)
    layers = [keras.Input((sizes[0],))]
    for i, size in enumerate(sizes[1:-1]):
        layers.append(L.Dense(size, activation="relu", name=f"fc{i + 1}"))
    layers.append(L.Dense(sizes[-1], name="out"))
    model = tl.wrap(keras.Sequential(layers))
    for _ in range(rounds):
        tl.prune(model, tl.PruneFraction(rate, block=block, output_rate=rate))
    return model


def inputs(n=64, width=64):
    return np.random.default_rng(0).normal(size=(n, width)).astype("float32")


def test_float_block_sparse_export_loads_matches_and_is_not_densified(tmp_path):
    model = pruned_mlp("tflite-float")
    path = os.path.join(tmp_path, "m.tflite")
    report = tl.export_tflite(model, path, representative_data=inputs())
    assert os.path.getsize(path) == report.size < report.dense_size
    assert report.delegate_ok and "max |error|" in report.verification
    fc = [t for t in report.tensors if t.op == "FULLY_CONNECTED"]
    assert len(fc) == 3
    for tensor in fc:
        assert tensor.encoding == "block-sparse" and tensor.block == (1, 4)
        assert not tensor.densified
    assert "DENSIFY" not in report.ops
    # The file really computes what Keras computes.
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=1)
    x = inputs(8)
    np.testing.assert_allclose(tflite._run(interpreter, x), model.predict(x, verbose=0), atol=1e-4)
    assert "block-sparse" in str(report) and "accepted" in str(report)


def test_int8_block_sparse_export_is_small_and_right(tmp_path):
    model = pruned_mlp("tflite-int8", sizes=(64, 40, 24, 10), rounds=2)  # 40, 24: partial 16-blocks
    report = tl.export_tflite(
        model, os.path.join(tmp_path, "m.tflite"), quantize="int8", representative_data=inputs(200)
    )
    assert not report.notes
    assert all(
        t.encoding == "block-sparse" and t.block == (1, 16)
        for t in report.tensors
        if t.op == "FULLY_CONNECTED"
    )


def test_fact_partial_int8_blocks_give_wrong_results_in_litert(tmp_path):
    """Why block='tflite-int8' prunes partial blocks: LiteRT 2.3 gets them wrong.

    If this starts failing, LiteRT fixed its sparse int8 kernel and the
    partial-block rule in criteria.py can go.
    """
    model = pruned_mlp((16, 1), sizes=(64, 40, 24, 10), rounds=2)  # tuple: partial blocks kept
    report = tl.export_tflite(
        model, os.path.join(tmp_path, "m.tflite"), quantize="int8", representative_data=inputs(200)
    )
    assert report.notes and "differ from the dense encoding" in report.notes[0]


def test_unstructured_masks_are_densified_for_convolutions(tmp_path):
    keras.utils.set_random_seed(0)
    model = tl.wrap(
        keras.Sequential(
            [
                keras.Input((8, 8, 3)),
                L.Conv2D(16, 3, name="conv"),
                L.Flatten(),
                L.Dense(10, name="out"),
            ]
        )
    )
    for _ in range(3):
        tl.prune(model, tl.PruneFraction(0.5, output_rate=0.5))
    report = tl.export_tflite(model, os.path.join(tmp_path, "c.tflite"))
    assert report.ops.get("DENSIFY", 0) >= 1
    assert "CONV_2D" in report.densified_ops
    assert "DENSIFY" in str(report)


def test_int8_with_unstructured_masks_is_made_loadable_or_refused(tmp_path):
    model = pruned_mlp((1, 1), sizes=(784, 300, 100, 10), rate=0.45)
    data = np.random.default_rng(0).random((100, 784)).astype("float32")
    path = os.path.join(tmp_path, "m.tflite")
    with pytest.raises(tl.ExportError, match="tflite-int8"):
        tl.export_tflite(model, path, quantize="int8", representative_data=data, fallback="error")
    assert not os.path.exists(path)
    report = tl.export_tflite(model, path, quantize="int8", representative_data=data)
    assert report.notes and "dense encoding instead" in report.notes[0]
    assert report.delegate_ok and all(t.encoding == "dense" for t in report.tensors)
    from ai_edge_litert.interpreter import Interpreter

    Interpreter(model_path=path, num_threads=1).allocate_tensors()


def test_a_failed_export_writes_nothing_and_keeps_the_old_file(tmp_path, monkeypatch):
    model = pruned_mlp("tflite-float")
    path = os.path.join(tmp_path, "m.tflite")
    with open(path, "wb") as file:
        file.write(b"good old file")

    def broken_convert(*args, **kwargs):
        raise RuntimeError("converter crashed")

    monkeypatch.setattr(tflite, "_convert", broken_convert)
    with pytest.raises(tl.ExportError, match="converter crashed"):
        tl.export_tflite(model, path)
    monkeypatch.undo()

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(tflite.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        tl.export_tflite(model, path)
    monkeypatch.undo()
    assert open(path, "rb").read() == b"good old file"
    assert os.listdir(tmp_path) == ["m.tflite"]


def test_verification_mismatch_is_an_error(tmp_path, monkeypatch):
    model = pruned_mlp("tflite-float")
    path = os.path.join(tmp_path, "m.tflite")
    monkeypatch.setattr(tflite, "_verify", lambda *a: (False, "max |error| 1.0"))
    with pytest.raises(tl.ExportError, match="does not match the Keras model"):
        tl.export_tflite(model, path)
    assert not os.path.exists(path)


def test_export_bad_input(tmp_path):
    model = pruned_mlp("tflite-float")
    path = os.path.join(tmp_path, "m.tflite")
    with pytest.raises(ValueError, match="quantize"):
        tl.export_tflite(model, path, quantize="int4")
    with pytest.raises(ValueError, match="representative_data"):
        tl.export_tflite(model, path, quantize="int8")
    with pytest.raises(ValueError, match="folder"):
        tl.export_tflite(model, os.path.join(tmp_path, "nope", "m.tflite"))
    with pytest.raises(ValueError, match="fallback"):
        tl.export_tflite(model, path, fallback="maybe")
    with pytest.raises(ValueError, match="tolerance"):
        tl.export_tflite(model, path, tolerance=-1)
    assert not os.path.exists(path)


def test_inspect_reads_a_file_made_by_tensorflow_alone(tmp_path):
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32,)), L.Dense(16, name="fc")])
    kernel = model.layers[0].kernel
    kernel.assign(kernel.numpy() * (np.random.default_rng(0).random((32, 16)) > 0.7))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    with contextlib.redirect_stdout(io.StringIO()):
        content = converter.convert()
    path = os.path.join(tmp_path, "tf.tflite")
    open(path, "wb").write(content)
    report = tl.inspect_tflite(path)
    (tensor,) = report.tensors
    assert tensor.shape == (16, 32) and tensor.encoding == "random-sparse" and tensor.densified
    assert tensor.sparsity == pytest.approx(
        1 - np.count_nonzero(kernel.numpy()) / kernel.numpy().size
    )
    with pytest.raises(FileNotFoundError):
        tl.inspect_tflite(os.path.join(tmp_path, "missing.tflite"))
    bad = os.path.join(tmp_path, "bad.tflite")
    open(bad, "wb").write(b"not a flatbuffer")
    with pytest.raises(ValueError, match="not a valid .tflite"):
        tl.inspect_tflite(bad)


def _cli(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", "tf_lottery.cli", *args], capture_output=True, text=True, env=env
    )


def test_cli_export_inspect_summary_and_errors(tmp_path):
    model = pruned_mlp("tflite-int8", sizes=(64, 32, 10))
    keras_path = os.path.join(tmp_path, "m.keras")
    model.save(keras_path)
    np.savez(os.path.join(tmp_path, "x.npz"), x=inputs(100))
    out = os.path.join(tmp_path, "m.tflite")
    result = _cli(
        "export", keras_path, out, "--quantize", "int8", "--data", os.path.join(tmp_path, "x.npz")
    )
    assert result.returncode == 0, result.stderr
    assert "block-sparse" in result.stdout and os.path.exists(out)
    result = _cli("inspect", out)
    assert result.returncode == 0 and "1x16" in result.stdout
    result = _cli("summary", keras_path)
    assert result.returncode == 0 and "fc1" in result.stdout and "total" in result.stdout
    for args, message in [
        (("summary", os.path.join(tmp_path, "missing.keras")), "No such model file"),
        (("inspect", os.path.join(tmp_path, "missing.tflite")), "No such .tflite file"),
        (("export", os.path.join(tmp_path, "x.npz"), out), "Could not load"),
    ]:
        result = _cli(*args)
        assert result.returncode == 2 and message in result.stderr
        assert "Traceback" not in result.stderr
    corrupt = os.path.join(tmp_path, "corrupt.keras")
    open(corrupt, "wb").write(open(keras_path, "rb").read()[:100])
    result = _cli("summary", corrupt)
    assert (
        result.returncode == 2 and "corrupt" in result.stderr and "Traceback" not in result.stderr
    )
