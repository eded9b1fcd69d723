"""Capturing what TensorFlow's converter and LiteRT print, so that callers print only their own.

TensorFlow and LiteRT log from C++ (absl) straight to file descriptor 2, and
ignore `TF_CPP_MIN_LOG_LEVEL` once TensorFlow is loaded; the converter also prints
to descriptor 1 and raises Python warnings. Only redirecting the descriptors
themselves silences all of it.
"""

import contextlib
import ctypes
import io
import os
import sys
import tempfile
import warnings


def _flush_c_streams():
    # C's stdio buffers what C++ code prints; flush it into the capture, not after it.
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # no C library to load (Windows)
        pass


@contextlib.contextmanager
def captured_output():
    """Captures descriptors 1 and 2, `sys.stdout`, `sys.stderr` and warnings.

    The descriptors are restored on exit, also when the block raises. Not
    thread-safe: descriptors belong to the whole process.

    Yields:
        A list that receives the captured lines, non-empty ones only, when the
        block exits: Python warnings first, as `"Category: message"`.

    Example:

    ```python
    with captured_output() as lines:
        content = converter.convert()
    warnings = [line for line in lines if line.startswith("W")]
    ```
    """
    lines = []
    python_output = io.StringIO()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with (
            tempfile.TemporaryFile() as sink,
            warnings.catch_warnings(record=True) as caught,
            contextlib.redirect_stdout(python_output),
            contextlib.redirect_stderr(python_output),
        ):
            warnings.simplefilter("always")
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                yield lines
            finally:
                _flush_c_streams()
                for fd, original in zip((1, 2), saved):
                    os.dup2(original, fd)
                sink.seek(0)
                native = sink.read().decode(errors="replace")
                lines.extend(f"{w.category.__name__}: {w.message}" for w in caught)
                text = python_output.getvalue() + native
                lines.extend(line for line in text.splitlines() if line.strip())
    finally:
        for original in saved:
            os.close(original)
