"""The `tf-lottery` command's entry point: `tf_lottery.cli.main`, without Keras until needed.

`import tf_lottery` imports Keras, and so TensorFlow (seconds, hundreds of MB),
to register tf_lottery's classes for `keras.models.load_model`. The command does
not need that for `--help`, argument errors, `inspect` or `eval`, which read and
run .tflite files with numpy and LiteRT only. This module sits outside the
package so that it is imported first: `tf_lottery/__init__.py` sees it in
`sys.modules` and leaves the Keras half to first use, which `export` and
`summary` make. Do not import it from a program that calls
`keras.models.load_model` (use `tf_lottery.load_model` there, or touch any
Keras-side name first). See docs/imports.md.

    tf-lottery --help
    python -m tf_lottery_cli --help     # the same
"""

import sys

# Run as `python -m tf_lottery_cli` this module is `__main__`: registered under
# its own name too, before the package looks for it.
sys.modules.setdefault("tf_lottery_cli", sys.modules[__name__])

from tf_lottery import cli  # noqa: E402


def main(argv=None):
    """Runs the command; returns its exit status (0, or 2 after a one-line error)."""
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
