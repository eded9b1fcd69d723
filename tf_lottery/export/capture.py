"""Capturing what TensorFlow, its converter and LiteRT print, so that callers print only their own.

TensorFlow and LiteRT log from C++ (absl) straight to file descriptor 2, and
ignore `TF_CPP_MIN_LOG_LEVEL` once TensorFlow is loaded; the converter also prints
to descriptor 1 and raises Python warnings. Only redirecting the descriptors
themselves silences all of it.

TensorFlow prints at two moments of its own: while it is imported (oneDNN, CUDA
stubs, CPU features: lines written before absl's log is set up, which no log
level hides) and when its CUDA platform starts, at the first op or device query
(`failed call to cuInit` on a machine without a GPU, an ERROR that only
`TF_CPP_MIN_LOG_LEVEL=3` hides). `quiet_tensorflow_import` moves the second
moment into the first and captures both, whoever imports TensorFlow later (Keras
at `import keras`, or `keras.utils.set_random_seed` under JAX and PyTorch).
"""

import contextlib
import ctypes
import importlib.abc
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


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader of `tensorflow` inside `captured_output`, then starts its CUDA platform."""

    def __init__(self, loader, finder):
        self._loader = loader
        self._finder = finder

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        if self._finder in sys.meta_path:
            sys.meta_path.remove(self._finder)  # once is enough
        # Give the module its own loader back: importlib.resources and pickling ask it.
        module.__spec__.loader = module.__loader__ = self._loader
        lines = []
        try:
            with captured_output() as lines:
                self._loader.exec_module(module)
                # Listing devices starts the CUDA platform (cuInit) but creates no
                # device, so tf.config's device settings still work afterwards.
                module.config.list_physical_devices("GPU")
        except BaseException:
            # What TensorFlow said before it failed may say why.
            print("\n".join(lines), file=sys.stderr)
            raise


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` with the other finders and hands it to `_QuietLoader`.

    It stays until TensorFlow is imported: Keras and others look TensorFlow up
    (`importlib.util.find_spec`) without importing it.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = None if finder is self or find is None else find(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _QuietLoader(spec.loader, self)
                return spec
        return None


def quiet_tensorflow_import():
    """Makes a later `import tensorflow` print nothing: neither its import nor cuInit.

    Does nothing when TensorFlow is already imported (its start-up logs are then
    out already). What TensorFlow prints while it is imported is dropped, with
    the Python warnings it raises; an import that fails still raises. Like
    `captured_output`, this is not thread-safe: what other threads print while
    TensorFlow is being imported is dropped too. `CUDA_VISIBLE_DEVICES` must be
    set before the import, as it must before TensorFlow's first op.

    Example:

    ```python
    quiet_tensorflow_import()
    import tensorflow as tf  # no oneDNN, cudart or cuInit lines
    ```
    """
    if "tensorflow" in sys.modules:
        return
    if not any(isinstance(finder, _QuietTensorFlowFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowFinder())
