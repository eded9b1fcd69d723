"""Loading saved models with errors that name the file and say what is wrong."""

import io
import zipfile

import keras

from tf_lottery import in_place
from tf_lottery.model_file import check_model_file

_WEIGHTS_FILE = "model.weights.h5"


def _saved_state(path):
    """The pruning state's store in a `.keras` file (a dict of arrays), or `None`.

    A model wrapped in place keeps its wrappers outside its config, as one entry
    of the weights file (see `tf_lottery.in_place`), which `keras.models.load_model`
    skips.
    """
    import h5py

    with zipfile.ZipFile(path) as archive:
        if _WEIGHTS_FILE not in archive.namelist():
            return None
        data = archive.read(_WEIGHTS_FILE)
    with h5py.File(io.BytesIO(data), "r") as weights:
        group = weights.get(f"{in_place.STATE_ATTRIBUTE}/vars")
        if group is None:
            return None
        return {key: group[key][()] for key in group.keys()}


def load_model(path, **kwargs):
    """Loads a `.keras` model that may contain tf_lottery layers.

    The same as `keras.models.load_model` (which also works once tf_lottery is
    imported: every class is registered), but a missing, truncated or foreign
    file gets a `ValueError` that names the file and what is wrong with it.

    Args:
        path: The `.keras` file.
        **kwargs: Passed to `keras.models.load_model`.

    A model wrapped in place (a KerasHub model, see `tf_lottery.wrap`) gets its
    pruning state back here; `keras.models.load_model` gives it without.

    Returns:
        The model, with its masks, initial weights and rewind points.

    Example:

    ```python
    model = tf_lottery.load_model("pruned.keras")
    ```
    """
    path = check_model_file(path)
    try:
        model = keras.models.load_model(path, **kwargs)
        store = _saved_state(path) if zipfile.is_zipfile(path) else None
    except Exception as error:  # Keras raises many kinds for a damaged file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"Could not load {path!r} as a Keras model: {reason}") from error
    if store is not None:
        state = in_place.attach_from_layout(model, in_place.read_layout(store))
        state.load_own_variables(store)
    return model
