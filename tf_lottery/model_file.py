"""Checking a model file before Keras loads it: errors that name the file and what is wrong.

Imports neither Keras nor TensorFlow: the `tf-lottery` command checks its MODEL
argument at once, before it pays for importing Keras and its backend.
"""

import os
import zipfile


def check_model_file(path):
    """Raises a `ValueError` naming the file unless `path` looks like a model Keras can load.

    Keras' own message for a file of another kind (a .npz, a .py) is advice about
    TensorFlow SavedModels; this one says what the file is and what Keras reads.

    Args:
        path: The file to check.

    Returns:
        `path` as a str.

    Example:

    ```python
    check_model_file("model.npz")  # ValueError: ... not .npz files.
    ```
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"No such model file: {path!r}.")
    extension = os.path.splitext(path)[1]
    if extension not in (".keras", ".h5", ".hdf5"):
        raise ValueError(
            f"Could not load {path!r} as a Keras model: Keras reads .keras files (written "
            "by model.save('m.keras')) and legacy .h5 files, not "
            f"{extension + ' files' if extension else 'files without an extension'}."
        )
    if extension == ".keras" and not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path!r} is not a .keras file: it is not a zip archive (truncated, or "
            "written by something other than model.save()?)."
        )
    return path
