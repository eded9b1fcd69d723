"""The tf-lottery command: one-line errors, only its own output, complete help."""

import os
import re
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from test_tflite import inputs
from test_tflite import pruned_mlp
from test_tflite import two_input_model

import tf_lottery as tl
from tf_lottery import cli

PACKAGE = os.path.dirname(os.path.abspath(cli.__file__))
ROOT = os.path.dirname(PACKAGE)
BACKENDS = ("keras", "tensorflow", "jax", "torch")


def _main(capfd, *args):
    """Runs the command in this process: (exit status, stdout, stderr); argparse's exits too."""
    capfd.readouterr()
    try:
        status = cli.main([os.fspath(arg) for arg in args])
    except SystemExit as exit:
        status = exit.code
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


def _console_script(folder):
    """The `tf-lottery` script: the installed one where this checkout installed it, else the
    one pip writes from setup.py's entry point (the venv may hold an older install)."""
    with open(os.path.join(ROOT, "setup.py")) as file:
        module, function = re.search(r'"tf-lottery=([\w.]+):(\w+)"', file.read()).groups()
    line = f"from {module} import {function}"
    installed = os.path.join(os.path.dirname(sys.executable), "tf-lottery")
    if os.path.isfile(installed) and line in open(installed).read():
        return installed
    path = os.path.join(folder, "tf-lottery")
    with open(path, "w") as file:
        file.write(f"import sys\n{line}\nif __name__ == '__main__':\n    sys.exit({function}())\n")
    return path


# Runs a script as `python SCRIPT ARGS...` would, then writes the names of the
# modules it imported to a file. (`python -X importtime` cannot tell: it writes to
# descriptor 2, which tf_lottery captures while it imports Keras.)
RUN_AND_LIST_MODULES = """
import runpy, sys
script, listing = sys.argv[1], sys.argv[2]
sys.argv = [script, *sys.argv[3:]]
try:
    runpy.run_path(script, run_name="__main__")
    status = 0
except SystemExit as exit:
    status = exit.code
with open(listing, "w") as file:
    file.write("\\n".join(sys.modules))
sys.exit(status)
"""


def _command(folder, *args):
    """Runs the console script on this checkout: (status, stdout, stderr, modules imported)."""
    listing = os.path.join(folder, "modules.txt")
    start = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            RUN_AND_LIST_MODULES,
            _console_script(folder),
            listing,
            *map(os.fspath, args),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    print(f"tf-lottery {' '.join(map(str, args))}: {time.perf_counter() - start:.2f} s")
    with open(listing) as file:
        modules = set(file.read().split())
    return result.returncode, result.stdout, result.stderr, modules


def _backends(modules):
    return sorted({name.split(".")[0] for name in modules} & set(BACKENDS))


@pytest.mark.slow  # a subprocess per command
def test_help_and_argument_errors_import_neither_keras_nor_tensorflow(tmp_path):
    for args, status, text in [
        (["--help"], 0, "usage: tf-lottery [-h] COMMAND"),
        (["export", "--help"], 0, "--per-channel, --no-per-channel"),
        (["export"], 2, "tf-lottery export: error: the following arguments are required"),
        (["eval", "a", "b", "-x"], 2, "tf-lottery eval: error: unrecognized arguments: -x"),
        (["export", "m.keras", "m.tflite", "--quantise", "int8"], 2, "did you mean --quantize?"),
        (["inspect", tmp_path / "missing.tflite"], 2, "No such .tflite file"),
    ]:
        code, stdout, stderr, modules = _command(tmp_path, *args)
        assert code == status and text in stdout + stderr, (args, stdout, stderr)
        assert "tf_lottery.cli" in modules and _backends(modules) == [], args


@pytest.mark.slow  # a subprocess per command
@pytest.mark.tensorflow
def test_inspect_and_eval_import_neither_keras_nor_tensorflow(tmp_path):
    model = pruned_mlp("tflite-float", sizes=(64, 32, 10))
    path = tl.export_tflite(model, tmp_path / "m.tflite", representative_data=inputs(50)).path
    np.savez(tmp_path / "x.npz", x=inputs(50), y=np.zeros(50, "int64"))
    code, stdout, stderr, modules = _command(tmp_path, "inspect", path)
    assert code == 0 and "block-sparse" in stdout and stderr == "", stderr
    assert _backends(modules) == [] and "ai_edge_litert.schema_py_generated" in modules
    code, stdout, stderr, modules = _command(tmp_path, "eval", path, tmp_path / "x.npz")
    assert code == 0 and "ran 50 samples" in stdout and "accuracy: " in stdout, stderr
    assert _backends(modules) == [] and "ai_edge_litert.interpreter" in modules


def test_cli_errors_name_the_cli_arguments(tmp_path, capfd):
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(tmp_path / "m.keras")
    (tmp_path / "x.npz").write_bytes(b"PK\x03\x04 not really")
    (tmp_path / "train.py").write_text("print(1)\n")
    np.save(tmp_path / "x.npy", np.zeros((2, 4), "float32"))
    out = tmp_path / "m.tflite"
    for args, message in [
        (("export", tmp_path / "m.keras", out, "--quantize", "int8"), "--quantize int8 needs --data"),
        (("export", tmp_path / "m.keras", tmp_path / "no" / "m.tflite"), "cannot write output"),
        (("export", tmp_path / "x.npz", out), "Keras reads .keras files"),
        (("export", tmp_path / "train.py", out), "not .py files"),
        (("inspect", tmp_path / "m.keras"), "it is a zip archive (a .keras model"),
        (("eval", tmp_path / "m.keras", tmp_path / "x.npy"), "it is a zip archive (a .keras model"),
        (("eval", tmp_path / "none.tflite", tmp_path / "x.npy"), "No such .tflite file"),
        (("eval", tmp_path / "m.tflite", tmp_path / "x.npz", "--out", tmp_path / "no" / "o.npz"),
         "cannot write --out"),
    ]:  # fmt: skip
        status, stdout, stderr = _main(capfd, *args)
        assert status == 2 and message in stderr and stdout == "", (args, stderr)
        assert stderr.startswith(f"tf-lottery {args[0]}: error: ") and stderr.count("\n") == 1
        assert "representative_data" not in stderr and "TFSMLayer" not in stderr
        assert "path=" not in stderr, stderr


def test_a_typo_in_an_export_flag_prints_the_export_usage(capfd):
    status, stdout, stderr = _main(capfd, "export", "m.keras", "m.tflite", "--per-chanel")
    assert status == 2 and stdout == ""
    assert stderr.startswith("usage: tf-lottery export ")
    assert stderr.endswith(
        "tf-lottery export: error: unrecognized arguments: --per-chanel "
        "(did you mean --per-channel?)\n"
    )


def test_export_options_map_onto_export_tflite(tmp_path, capfd, monkeypatch):
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(tmp_path / "m.keras")
    calls = []
    monkeypatch.setattr(tl, "export_tflite", lambda model, path, **options: calls.append(options))
    args = ["export", tmp_path / "m.keras", tmp_path / "m.tflite"]
    assert _main(capfd, *args)[0] == 0
    options = [
        "--no-per-channel", "--no-shrink", "--batch-size", "1", "--select-tf-ops",
        "--tolerance", "0.5", "--quantize", "dynamic", "--fallback", "error", "--no-verify",
    ]  # fmt: skip
    assert _main(capfd, *args, *options)[0] == 0
    defaults = dict(quantize=None, representative_data=None, verify=True, tolerance=None,
                    fallback="dense", per_channel=True, shrink=True, batch_size=None,
                    select_tf_ops=False)  # fmt: skip
    assert calls == [
        defaults,
        {**defaults, "quantize": "dynamic", "verify": False, "tolerance": 0.5,
         "fallback": "error", "per_channel": False, "shrink": False, "batch_size": 1,
         "select_tf_ops": True},
    ]  # fmt: skip
    for bad in (["--batch-size", "0"], ["--tolerance", "-1"], ["--tolerance", "nan"]):
        status, _, stderr = _main(capfd, *args, *bad)
        assert status == 2 and f"argument {bad[0]}: expected a " in stderr, stderr


@pytest.mark.tensorflow
def test_the_smallest_int8_file_of_the_readme_is_made_by_the_cli_too(tmp_path, capfd):
    # README: export_tflite(..., quantize="int8", per_channel=False).
    model = pruned_mlp("tflite-int8", sizes=(64, 32, 10))
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", inputs(100))
    status, stdout, stderr = _main(
        capfd, "export", tmp_path / "m.keras", tmp_path / "cli.tflite", "--quantize", "int8",
        "--data", tmp_path / "x.npy", "--no-per-channel",
    )  # fmt: skip
    assert status == 0, stderr
    per_tensor = tl.export_tflite(
        model, tmp_path / "api.tflite", quantize="int8", representative_data=inputs(100),
        per_channel=False,
    )  # fmt: skip
    per_channel = tl.export_tflite(
        model, tmp_path / "channels.tflite", quantize="int8", representative_data=inputs(100)
    )
    cli_file = (tmp_path / "cli.tflite").read_bytes()
    assert cli_file == (tmp_path / "api.tflite").read_bytes()
    assert per_tensor.size == len(cli_file) < per_channel.size
