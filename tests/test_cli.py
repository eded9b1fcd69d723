"""The tf-lottery command: one-line errors, only its own output, complete help."""

import os
import subprocess
import sys

import numpy as np
import pytest
from test_tflite import inputs
from test_tflite import pruned_mlp
from test_tflite import two_input_model

import tf_lottery as tl
from tf_lottery import cli

PACKAGE = os.path.dirname(os.path.abspath(cli.__file__))


def _main(capfd, *args):
    """Runs the command in this process: (exit status, stdout, stderr)."""
    capfd.readouterr()
    status = cli.main([os.fspath(arg) for arg in args])
    out, err = capfd.readouterr()
    return status, out, err


@pytest.mark.tensorflow
def test_export_inspect_summary_and_one_line_errors(tmp_path, capfd):
    model = pruned_mlp("tflite-int8", sizes=(64, 32, 10))
    keras_path = tmp_path / "m.keras"
    model.save(keras_path)
    np.savez(tmp_path / "x.npz", x=inputs(100))
    out = tmp_path / "m.tflite"
    status, stdout, stderr = _main(
        capfd, "export", keras_path, out, "--quantize", "int8", "--data", tmp_path / "x.npz"
    )
    assert status == 0 and stderr == ""  # nothing from TensorFlow or LiteRT
    assert "block-sparse" in stdout and "fc1/kernel" in stdout and os.path.exists(out)
    status, stdout, _ = _main(capfd, "inspect", out)
    assert status == 0 and "1x16" in stdout
    status, stdout, _ = _main(capfd, "summary", keras_path)
    assert status == 0 and "fc1" in stdout and "total" in stdout
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(keras_path.read_bytes()[:100])
    for args, message in [
        (("summary", tmp_path / "missing.keras"), "No such model file"),
        (("summary", corrupt), "corrupt"),
        (("inspect", tmp_path / "missing.tflite"), "No such .tflite file"),
        (("export", tmp_path / "x.npz", out), "Could not load"),
        (("export", keras_path, out, "--data", tmp_path / "none.npz"), "no such --data file"),
        (("export", keras_path, out, "--data", keras_path), "cannot read"),
        (("eval", out, tmp_path / "x.npz", "--labels", tmp_path / "none.npy"), "no such"),
    ]:
        status, stdout, stderr = _main(capfd, *args)
        assert status == 2 and message in stderr and stdout == ""
        assert stderr.startswith(f"tf-lottery {args[0]}: error: ") and stderr.count("\n") == 1


@pytest.mark.tensorflow
def test_export_takes_npy_and_maps_npz_arrays_to_inputs_by_name_or_order(tmp_path, capfd):
    pruned_mlp("tflite-int8", sizes=(64, 32, 10)).save(tmp_path / "one.keras")
    np.save(tmp_path / "x.npy", inputs(100))
    status, stdout, stderr = _main(
        capfd, "export", tmp_path / "one.keras", tmp_path / "one.tflite", "--quantize", "int8",
        "--data", tmp_path / "x.npy",
    )  # fmt: skip
    assert status == 0 and "of 100 inputs" in stdout, stderr
    model, data = two_input_model()
    model.save(tmp_path / "two.keras")
    np.savez(tmp_path / "named.npz", meta=data["meta"], pixels=data["pixels"])
    np.savez(tmp_path / "ordered.npz", a=data["pixels"], b=data["meta"], y=np.zeros(300))
    for samples in ("named.npz", "ordered.npz"):
        status, stdout, stderr = _main(
            capfd, "export", tmp_path / "two.keras", tmp_path / "two.tflite", "--quantize",
            "int8", "--data", tmp_path / samples,
        )  # fmt: skip
        assert status == 0 and "of 300 inputs" in stdout, stderr
    status, _, stderr = _main(
        capfd, "export", tmp_path / "two.keras", tmp_path / "two.tflite", "--quantize", "int8",
        "--data", tmp_path / "x.npy",
    )  # fmt: skip
    assert status == 2 and "holds 1 input arrays ['x'] for 2 inputs ['pixels', 'meta']" in stderr


@pytest.mark.tensorflow
def test_eval_prints_accuracy_or_saves_the_outputs(tmp_path, capfd):
    model, data = two_input_model()
    path = tl.export_tflite(model, tmp_path / "m.tflite", representative_data=data).path
    labels = model.predict(data, verbose=0).argmax(1)
    labels[:30] = (labels[:30] + 1) % 10  # 90% right
    np.savez(tmp_path / "data.npz", y=labels, **data)
    status, stdout, stderr = _main(capfd, "eval", path, tmp_path / "data.npz")
    assert status == 0 and stderr == ""
    assert "ran 300 samples" in stdout and "accuracy: 90.00%" in stdout
    np.save(tmp_path / "labels.npy", np.eye(10)[labels])  # one-hot labels work too
    np.savez(tmp_path / "x.npz", pixels=data["pixels"], meta=data["meta"])
    status, stdout, _ = _main(
        capfd, "eval", path, tmp_path / "x.npz", "--labels", tmp_path / "labels.npy",
        "--out", tmp_path / "out.npz",
    )  # fmt: skip
    assert status == 0 and "accuracy: 90.00%" in stdout and "output_0 (300, 10)" in stdout
    with np.load(tmp_path / "out.npz") as saved:
        np.testing.assert_allclose(saved["output_0"], model.predict(data, verbose=0), atol=1e-4)
    status, _, stderr = _main(capfd, "eval", path, tmp_path / "x.npz", "--labels", path)
    assert status == 2 and "cannot read" in stderr
    np.save(tmp_path / "few.npy", labels[:10])
    status, _, stderr = _main(
        capfd, "eval", path, tmp_path / "x.npz", "--labels", tmp_path / "few.npy"
    )
    assert status == 2 and "one label per sample, 300 in all" in stderr


def test_every_command_and_argument_has_help():
    commands = cli._parser()._subparsers._group_actions[0]
    assert sorted(commands.choices) == ["eval", "export", "inspect", "summary"]
    for name, command in commands.choices.items():
        assert command.description, name
        for action in command._actions:
            assert action.help, f"tf-lottery {name} {action.dest} has no help"
    text = commands.choices["export"].format_help()
    assert "--quantize {none,dynamic,float16,int8}" in text and "(default: none)" in text


def _python(code):
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=os.path.dirname(PACKAGE)
    )


def test_help_and_argument_errors_import_neither_keras_nor_tensorflow():
    # tf_lottery/__init__.py imports the library (Keras) for its users; the
    # command itself must not. A bare package stands in for it here.
    result = _python(
        "import sys, types\n"
        "package = types.ModuleType('tf_lottery')\n"
        f"package.__path__ = [{PACKAGE!r}]\n"
        "sys.modules['tf_lottery'] = package\n"
        "from tf_lottery import cli\n"
        "for argv in (['--help'], ['export', '--help'], ['export'], ['eval', 'a', 'b', '-x']):\n"
        "    try:\n"
        "        cli.main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('imported:', [m for m in ('keras', 'tensorflow') if m in sys.modules])\n"
    )
    assert "usage: tf-lottery" in result.stdout and "error: the following" in result.stderr
    assert "imported: []" in result.stdout


def test_tf_lottery_help_prints_only_the_help():
    # The package imports Keras (and so TensorFlow) for its serialization
    # registry; what TensorFlow prints while loading must not reach the user.
    result = _python(
        "from tf_lottery import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
    )
    assert result.stderr == ""
    assert result.stdout.startswith("usage: tf-lottery"), result.stdout[:200]
