"""The `tf-lottery` command: export, inspect, evaluate and summarize pruned models.

    tf-lottery export MODEL.keras OUT.tflite [--quantize int8 --data SAMPLES.npz]
    tf-lottery inspect OUT.tflite
    tf-lottery eval OUT.tflite DATA.npz [--labels LABELS.npy] [--out OUTPUTS.npz]
    tf-lottery summary MODEL.keras

Data files are .npy (one array: the inputs of a one-input model) or .npz: an
array per input, matched to the inputs by name when the keys are the input
names, else in the file's order; an array named `y` holds labels.

Errors are one line on stderr and exit status 2, never a traceback. Keras and
TensorFlow are imported only by `export` and `summary` (quietly: their C++ logs
ignore TF_CPP_MIN_LOG_LEVEL); `--help`, argument errors, `inspect` and `eval`
need numpy and LiteRT only, and answer at once.
"""

import argparse
import difflib
import io
import os
import sys

import numpy as np

import tf_lottery
from tf_lottery.export import litert
from tf_lottery.export.capture import captured_output
from tf_lottery.export.samples import ModelInput
from tf_lottery.export.samples import arrange
from tf_lottery.files import write_atomically
from tf_lottery.model_file import check_model_file

_DATA_HELP = (
    ".npy of inputs, or .npz with one array per input (by input name, else in order) "
    "and optionally labels in 'y'"
)


class CommandError(Exception):
    """A user-facing error: printed as one line."""


def _keras_side(name, command):
    """A name of tf_lottery's Keras half: the first one imports Keras, quietly.

    Under `tf_lottery_cli` the package leaves its Keras half to first use; this
    loads all of it, so that every tf_lottery class is registered for loading.
    """
    try:
        return getattr(tf_lottery, name)
    except ImportError as error:  # no backend installed
        cause = error.__cause__ or error
        raise CommandError(
            f"{command} needs Keras with a backend, which cannot be imported here "
            f"({type(cause).__name__}: {cause}): pip install 'tf_lottery[export]' "
            "(TensorFlow and LiteRT: every command)"
        ) from error


def _load_model(path, command):
    try:
        check_model_file(path)  # at once, before Keras is imported
    except ValueError as error:
        raise CommandError(str(error)) from error
    load_model = _keras_side("load_model", command)
    try:
        with captured_output():
            # Not compiled: exporting and summarizing need no optimizer, and the
            # optimizer of a model saved under another backend is that backend's class.
            return load_model(path, compile=False)
    except ValueError as error:
        raise CommandError(str(error)) from error


def _check_folder(path, argument):
    """Fails before any work when the folder that `path` is to be written in is missing."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CommandError(
            f"cannot write {argument} {path}: there is no folder {folder} (create it first)"
        )


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
    buffer = io.BytesIO()
    np.savez(buffer, **{d["name"]: output for d, output in zip(details, outputs)})
    write_atomically(path, buffer.getvalue())


def _export_data(path, model):
    """The model's inputs in a --data file: one array, or a dict by input name."""
    specs = [ModelInput(t.name, tuple(t.shape)) for t in model.inputs]
    try:
        arrays = arrange(
            _inputs(_read_arrays(path, "--data"), [s.name for s in specs], path), specs, "--data"
        )
    except ValueError as error:
        raise CommandError(str(error)) from error
    return arrays[0] if len(arrays) == 1 else {s.name: a for s, a in zip(specs, arrays)}


def _export(args):
    if args.quantize == "int8" and args.data is None:
        raise CommandError(
            "--quantize int8 needs --data: a .npy or .npz of a few hundred real inputs "
            "(e.g. 300 training samples) to calibrate activation ranges"
        )
    _check_folder(args.output, "output")
    model = _load_model(args.model, "export")
    export_tflite = _keras_side("export_tflite", "export")
    data = None if args.data is None else _export_data(args.data, model)
    try:
        report = export_tflite(
            model,
            args.output,
            quantize=None if args.quantize == "none" else args.quantize,
            representative_data=data,
            verify=not args.no_verify,
            tolerance=args.tolerance,
            fallback=args.fallback,
            per_channel=args.per_channel,
            shrink=not args.no_shrink,
            batch_size=args.batch_size,
            select_tf_ops=args.select_tf_ops,
        )
    except (ValueError, ImportError) as error:
        raise CommandError(str(error)) from error
    print(report)


def _inspect(args):
    from tf_lottery.export.report import inspect_tflite

    try:
        print(inspect_tflite(args.file))
    except (FileNotFoundError, ValueError, ImportError) as error:
        raise CommandError(str(error)) from error


def _eval(args):
    if args.out is not None:
        _check_folder(args.out, "--out")
    arrays = _read_arrays(args.data, "data")
    labels = _labels(args, arrays)
    try:
        interpreter = litert.load(args.file)
        inputs, outputs = litert.signature(interpreter)
        x = _inputs(arrays, [d["name"] for d in inputs], args.data)
        results = litert.run(interpreter, arrange(x, litert.model_inputs(inputs), "data"))
    except (FileNotFoundError, ValueError, ImportError, litert.LiteRTError) as error:
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
    model = _load_model(args.model, "summary")
    sparsity = _keras_side("sparsity", "summary")
    try:
        print(sparsity(model))
    except ValueError as error:
        raise CommandError(str(error)) from error


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, less `None` and `False`: a flag's help says what it changes."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _command(commands, name, run, help, description):
    command = commands.add_parser(
        name,
        help=help,
        description=description,
        formatter_class=_HelpFormatter,
    )
    command.set_defaults(run=run, command_parser=command)
    return command


def _positive_int(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}")
    return int(text)


def _non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, received {text!r}")
    return value


def _add_export(commands):
    """The `export` command and its options."""
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
        "--tolerance",
        type=_non_negative_float,
        help="the check against Keras: the allowed max |error| as a fraction of max(1, largest "
        "|output|) for float and float16 files, or the minimum argmax agreement for dynamic "
        "and int8 ones; without it, export_tflite's own for the --quantize mode",
    )
    export.add_argument(
        "--fallback",
        choices=["dense", "error"],
        default="dense",
        help="when LiteRT cannot use the sparse file: write the dense one, or fail",
    )
    export.add_argument(
        "--per-channel",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="dynamic and int8: one quantization scale per output channel of each Dense "
        "kernel (TensorFlow's default); --no-per-channel uses one per tensor, which saves "
        "12 bytes per output channel: the smallest files",
    )
    export.add_argument(
        "--no-shrink",
        action="store_true",
        help="keep the units that pruning left dead (by default they are removed before "
        "converting: a smaller, faster dense model)",
    )
    export.add_argument(
        "--batch-size",
        type=_positive_int,
        help="fix the batch size of the file's inputs, e.g. 1 (an LSTM or GRU that is not "
        "unrolled converts only so, or with --select-tf-ops); without it, any batch size",
    )
    export.add_argument(
        "--select-tf-ops",
        action="store_true",
        help="let the converter keep TensorFlow ops that TFLite lacks; the file then needs "
        "the Flex delegate, which LiteRT's Python package lacks, so it is not checked here",
    )


def _parser():
    parser = argparse.ArgumentParser(
        prog="tf-lottery",
        description="\n\n".join(__doc__.split("\n\n")[:2]),
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_export(commands)
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


def _unrecognized(arguments, parser):
    """argparse's message for arguments a command does not take, with a close option named."""
    options = [option for action in parser._actions for option in action.option_strings]
    hints = [
        f"{argument} (did you mean {close[0]}?)" if close else argument
        for argument in arguments
        for close in [difflib.get_close_matches(argument.split("=")[0], options, n=1)]
    ]
    return "unrecognized arguments: " + " ".join(hints)


def main(argv=None):
    """Runs `tf-lottery` with `argv` (default: `sys.argv[1:]`); returns the exit status."""
    args, unknown = _parser().parse_known_args(argv)
    if unknown:
        # Reported by the command's parser, with its usage, not the top-level one.
        args.command_parser.error(_unrecognized(unknown, args.command_parser))
    try:
        args.run(args)
    except CommandError as error:
        print(f"tf-lottery {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
