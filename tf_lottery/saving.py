"""Loading saved models with errors that name the file and say what is wrong."""

import os
import zipfile

import keras


def load_model(path, **kwargs):
    """Loads a `.keras` model that may contain tf_lottery layers.

    The same as `keras.models.load_model` (which also works once tf_lottery is
    imported: every class is registered), but a missing, truncated or foreign
    file gets a `ValueError` that names the file and what is wrong with it.

    Args:
        path: The `.keras` file.
        **kwargs: Passed to `keras.models.load_model`.

    Returns:
        The model, with its masks, initial weights and rewind points.

    Example:

    ```python
    model = tf_lottery.load_model("pruned.keras")
    ```
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"No such model file: {path!r}.")
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path!r} is not a .keras file: it is not a zip archive (truncated, or "
            "written by something other than model.save()?)."
        )
    try:
        return keras.models.load_model(path, **kwargs)
    except Exception as error:  # Keras raises many kinds for a damaged file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"Could not load {path!r} as a Keras model: {reason}") from error
