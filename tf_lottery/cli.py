"""The `tf-lottery` command: export, inspect and summarize pruned models.

    tf-lottery export MODEL.keras OUT.tflite [--quantize int8 --data SAMPLES.npz]
    tf-lottery inspect OUT.tflite
    tf-lottery summary MODEL.keras

Errors are one line on stderr and exit status 2, never a traceback.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class CommandError(Exception):
    """A user-facing error: printed as one line."""


def _load_model(path):
    from tf_lottery.saving import load_model

    try:
        return load_model(path)
    except ValueError as error:
        raise CommandError(str(error)) from error


def _load_samples(path):
    if path is None:
        return None
    if not os.path.isfile(path):
        raise CommandError(f"no such data file: {path}")
    import numpy as np

    try:
        with np.load(path) as archive:
            key = "x" if "x" in archive.files else archive.files[0]
            return archive[key]
    except Exception as error:
        raise CommandError(f"cannot read {path} as a .npz of input samples: {error}") from error


def _export(args):
    from tf_lottery.tflite import export_tflite

    model = _load_model(args.model)
    quantize = None if args.quantize == "none" else args.quantize
    try:
        report = export_tflite(
            model,
            args.output,
            quantize=quantize,
            representative_data=_load_samples(args.data),
            verify=not args.no_verify,
            fallback=args.fallback,
        )
    except (ValueError, ImportError) as error:
        raise CommandError(str(error)) from error
    print(report)


def _inspect(args):
    from tf_lottery.tflite import inspect_tflite

    try:
        print(inspect_tflite(args.file))
    except (FileNotFoundError, ValueError) as error:
        raise CommandError(str(error)) from error


def _summary(args):
    import tf_lottery

    model = _load_model(args.model)
    try:
        print(tf_lottery.sparsity(model))
    except ValueError as error:
        raise CommandError(str(error)) from error


def _parser():
    parser = argparse.ArgumentParser(prog="tf-lottery", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="convert a .keras model to a sparse .tflite file")
    export.add_argument("model", help="the .keras file (wrapped or stripped)")
    export.add_argument("output", help="the .tflite file to write")
    export.add_argument(
        "--quantize", choices=["none", "dynamic", "float16", "int8"], default="none"
    )
    export.add_argument("--data", help=".npz of input samples (key 'x' or the first array)")
    export.add_argument("--no-verify", action="store_true", help="skip the comparison with Keras")
    export.add_argument(
        "--fallback",
        choices=["dense", "error"],
        default="dense",
        help="when LiteRT cannot use the sparse file: write the dense one, or fail",
    )
    export.set_defaults(run=_export)
    inspect = commands.add_parser(
        "inspect", help="show how each weight of a .tflite file is stored"
    )
    inspect.add_argument("file")
    inspect.set_defaults(run=_inspect)
    summary = commands.add_parser("summary", help="per-layer sparsity of a .keras model")
    summary.add_argument("model")
    summary.set_defaults(run=_summary)
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
