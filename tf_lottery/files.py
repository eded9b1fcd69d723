"""Writing files atomically: a file is complete or absent, never partial."""

import io
import os
import tempfile


def _umask():
    """The process's umask; reading it means setting it, so it is set back at once."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _complete_temporary(path, content):
    """A complete, flushed temporary copy of `content` beside `path`; returns its name.

    It gets the permissions `open()` would give it under the umask (mkstemp makes
    it private, 0o600, whatever the umask).
    """
    data = content.encode() if isinstance(content, str) else content
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tf_lottery-")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
    except BaseException:
        os.remove(temporary)
        raise
    return temporary


def write_atomically(path, content):
    """Writes `content` (bytes or str) to `path` through a temporary file.

    The temporary file sits in the same folder and replaces `path` only once it
    is complete and flushed to disk, so a failure leaves any older file intact.
    The file gets the permissions `open()` would give it under the umask.
    """
    temporary = _complete_temporary(path, content)
    try:
        os.replace(temporary, path)
    except BaseException:
        os.remove(temporary)
        raise


def write_once(path, content):
    """Writes `content` to `path` unless the file exists; returns whether it did.

    Like `write_atomically`, but the complete file is linked into place, which
    fails if `path` exists: of several processes writing the same file at once,
    exactly one succeeds and the others find its file.
    """
    temporary = _complete_temporary(path, content)
    try:
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.remove(temporary)


def save_figure(figure, path):
    """Saves a matplotlib figure as PNG, atomically, and closes it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    write_atomically(path, buffer.getvalue())
