"""The `tf-lottery` command: export, inspect, evaluate and summarize pruned models.

    tf-lottery export MODEL.keras OUT.tflite [--quantize int8 --data SAMPLES.npz]
    tf-lottery inspect OUT.tflite
    tf-lottery eval OUT.tflite DATA.npz [--labels LABELS.npy] [--out OUTPUTS.npz]
    tf-lottery summary MODEL.keras

Data files are .npy (one array: the inputs of a one-input model) or .npz: an
array per input, matched to the inputs by name when the keys are the input
names, else in the file's order; an array named `y` holds labels.

Errors are one line on stderr and exit status 2, never a traceback. Keras and
TensorFlow are imported only inside the commands that need them (quietly: their
C++ logs ignore TF_CPP_MIN_LOG_LEVEL), so `--help` and argument errors answer at
once.
"""

import argparse
import importlib
import io
import os
import sys

import numpy as np

from tf_lottery.capture import captured_output

_DATA_HELP = (
    ".npy of inputs, or .npz with one array per input (by input name, else in order) "
    "and optionally labels in 'y'"
)


class CommandError(Exception):
    """A user-facing error: printed as one line."""


def _import(name):
    """Imports a tf_lottery module that loads TensorFlow, without its import-time logs."""
    with captured_output():
        return importlib.import_module(name)


def _load_model(path):
    saving = _import("tf_lottery.saving")
    _import("tf_lottery.wrapper")  # registers the wrapper classes with Keras
    try:
        with captured_output():
            # Not compiled: exporting and summarizing need no optimizer, and the
            # optimizer of a model saved under another backend is that backend's class.
            return saving.load_model(path, compile=False)
    except ValueError as error:
        raise CommandError(str(error)) from error


def _read_arrays(path, argument):
    """The arrays of a .npy (named `x`) or .npz file, by name."""
    if not os.path.isfile(path):
        raise CommandError(f"no such {argument} file: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return {"x": loaded}
        with loaded:
            arrays = {key: loaded[key] for key in loaded.files}
    except Exception as error:  # numpy raises many kinds for a foreign file
        raise CommandError(f"cannot read {path} as a .npy or .npz file: {error}") from error
    foreign = [key for key, array in arrays.items() if not isinstance(array, np.ndarray)]
    if foreign or not arrays:
        raise CommandError(
            f"cannot read {path} as a .npy or .npz file: it holds {foreign or 'nothing'}, "
            "not arrays (a zip file of something else?)"
        )
    return arrays


def _inputs(arrays, names, path):
    """The model inputs among a data file's arrays, for inputs named `names`.

    By name when the file's keys (less `y`) are the input names; else in the
    file's order, or for a one-input model the array `x` (or the first one).
    """
    inputs = {key: array for key, array in arrays.items() if key != "y"}
    if not inputs:
        raise CommandError(f"{path} holds no input arrays, only labels 'y'")
    if set(inputs) == set(names):
        return inputs
    if len(names) == 1:
        return inputs.get("x", next(iter(inputs.values())))
    if len(inputs) != len(names):
        raise CommandError(
            f"{path} holds {len(inputs)} input arrays {list(inputs)} for {len(names)} inputs "
            f"{names}: save one array per input, named after it or in this order"
        )
    # By name from here on: a list is refused where the model's and the file's orders differ.
    return dict(zip(names, inputs.values()))


def _labels(args, arrays):
    if args.labels is None:
        return arrays.get("y")
    labels = _read_arrays(args.labels, "--labels")
    return labels.get("y", next(iter(labels.values())))


def _accuracy(outputs, labels):
    if len(outputs) != 1:
        raise CommandError(
            f"accuracy needs a file with one output; this one has {len(outputs)}: "
            "save them with --out instead"
        )
    (scores,) = outputs
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise CommandError(
            f"accuracy needs class scores of shape (samples, classes); the output has shape "
            f"{scores.shape}: save it with --out instead"
        )
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == scores.shape[1]:  # one-hot
        labels = labels.argmax(1)
    labels = labels.reshape(len(labels), -1)
    if labels.shape != (len(scores), 1):
        raise CommandError(
            f"expected one label per sample, {len(scores)} in all; received labels of shape "
            f"{np.shape(labels)}"
        )
    return float(np.mean(scores.argmax(1) == labels[:, 0]))


def _save_outputs(path, outputs, details):
    from tf_lottery.files import write_atomically

    buffer = io.BytesIO()
    np.savez(buffer, **{d["name"]: output for d, output in zip(details, outputs)})
    write_atomically(path, buffer.getvalue())


def _export(args):
    tflite = _import("tf_lottery.tflite")
    model = _load_model(args.model)
    data = None
    if args.data is not None:
        data = _inputs(_read_arrays(args.data, "--data"), [t.name for t in model.inputs], args.data)
    quantize = None if args.quantize == "none" else args.quantize
    try:
        report = tflite.export_tflite(
            model,
            args.output,
            quantize=quantize,
            representative_data=data,
            verify=not args.no_verify,
            fallback=args.fallback,
        )
    except (ValueError, ImportError) as error:
        raise CommandError(str(error)) from error
    print(report)


def _inspect(args):
    from tf_lottery.tflite_report import inspect_tflite

    try:
        print(inspect_tflite(args.file))
    except (FileNotFoundError, ValueError, ImportError) as error:
        raise CommandError(str(error)) from error


def _eval(args):
    from tf_lottery import litert
    from tf_lottery.samples import arrange

    arrays = _read_arrays(args.data, "data")
    labels = _labels(args, arrays)
    try:
        interpreter = litert.load(args.file)
        inputs, outputs = litert.signature(interpreter)
        x = _inputs(arrays, [d["name"] for d in inputs], args.data)
        results = litert.run(interpreter, arrange(x, litert.model_inputs(inputs), "data"))
    except (ValueError, ImportError, litert.LiteRTError) as error:
        raise CommandError(str(error)) from error
    print(f"{args.file}: ran {len(results[0]):,} samples")
    if labels is not None:
        print(f"accuracy: {_accuracy(results, labels):.2%}")
    if args.out is not None:
        _save_outputs(args.out, results, outputs)
        shapes = ", ".join(f"{d['name']} {r.shape}" for d, r in zip(outputs, results))
        print(f"wrote {args.out}: {shapes}")
    if labels is None and args.out is None:
        shapes = ", ".join(f"{d['name']} {r.shape}" for d, r in zip(outputs, results))
        print(f"outputs: {shapes} (give labels for accuracy, or --out to save them)")


def _summary(args):
    report = _import("tf_lottery.report")
    model = _load_model(args.model)
    try:
        print(report.sparsity(model))
    except ValueError as error:
        raise CommandError(str(error)) from error


def _command(commands, name, run, help, description):
    command = commands.add_parser(
        name,
        help=help,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    command.set_defaults(run=run)
    return command


def _parser():
    parser = argparse.ArgumentParser(
        prog="tf-lottery",
        description="\n\n".join(__doc__.split("\n\n")[:2]),
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    export = _command(
        commands,
        "export",
        _export,
        "convert a .keras model to a sparse .tflite file, checked in LiteRT",
        "Convert a .keras model (wrapped or stripped) to a .tflite file with sparse "
        "encoding, run it in LiteRT against its dense encoding and the Keras model, "
        "write the smaller usable one and print its report.",
    )
    export.add_argument("model", help="the .keras file (wrapped or stripped)")
    export.add_argument("output", help="the .tflite file to write")
    export.add_argument(
        "--quantize",
        choices=["none", "dynamic", "float16", "int8"],
        default="none",
        help="none: float32; dynamic: int8 weights, float activations; float16; "
        "int8: full integer, needs --data",
    )
    export.add_argument(
        "--data",
        help=_DATA_HELP + "; int8 calibration and the inputs the file is checked on "
        "(at most 1,000 used; random inputs without it)",
    )
    export.add_argument(
        "--no-verify", action="store_true", help="skip the comparison with the Keras model"
    )
    export.add_argument(
        "--fallback",
        choices=["dense", "error"],
        default="dense",
        help="when LiteRT cannot use the sparse file: write the dense one, or fail",
    )
    inspect = _command(
        commands,
        "inspect",
        _inspect,
        "show how each weight of a .tflite file is stored",
        "Print a .tflite file's size, ops, and each weight's shape, type, encoding "
        "(dense, random-sparse, block-sparse), sparsity and bytes.",
    )
    inspect.add_argument("file", help="the .tflite file")
    evaluate = _command(
        commands,
        "eval",
        _eval,
        "run a .tflite file on data: accuracy, or save its outputs",
        "Run a .tflite file in LiteRT on data; print the accuracy (argmax of the "
        "output) when labels are given, and/or save the outputs.",
    )
    evaluate.add_argument("file", help="the .tflite file")
    evaluate.add_argument("data", help=_DATA_HELP)
    evaluate.add_argument(
        "--labels", help="a .npy of labels (class ids or one-hot), instead of the data's 'y'"
    )
    evaluate.add_argument("--out", help="a .npz to save the outputs to, one array per output")
    summary = _command(
        commands,
        "summary",
        _summary,
        "per-layer sparsity of a .keras model",
        "Print how many prunable weights each layer of a .keras model has left.",
    )
    summary.add_argument("model", help="the .keras file")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except CommandError as error:
        print(f"tf-lottery {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
