"""What a lottery run keeps of a model: its layers, masks and weights, by position.

`build_model` usually leaves naming to Keras, and Keras gives every call new
names (`dense_4`, then `dense_6`), so a run cannot find a layer by its name.
It matches layers by position instead: the n-th `PruneWrapper` of one model is
the n-th of the next, checked by layer type and weight shapes. The names used
in a run's files are those of its first model, written in settings.json.

Arrays are stored compressed with numpy (`.npz`): masks as booleans, weights as
the masked values, whose zeros compress to almost nothing.
"""

import io

import keras
import numpy as np

from tf_lottery.files import write_atomically
from tf_lottery.files import write_once
from tf_lottery.pruning import apply_masks
from tf_lottery.wrapper import find_rewind_wrappers
from tf_lottery.wrapper import find_wrappers
from tf_lottery.masking import read_threshold


def describe_layers(model):
    """The wrapped layers of `model` in order: name, type and weight shapes.

    Returns:
        A JSON-ready list with one dict per `PruneWrapper`:
        `{"name": "fc1", "type": "Dense", "weights": {"kernel": [784, 300]}}`.
    """
    return [
        {
            "name": wrapper.target_name,
            "type": type(wrapper.layer).__name__,
            "weights": {m.name: list(m.mask.shape) for m in wrapper.masked_weights},
        }
        for wrapper in find_wrappers(model)
    ]


def check_layers(layers, model, source, caller="find_winning_ticket"):
    """Raises a ValueError unless `model`'s wrapped layers match `layers` by position.

    Names may differ; types, weight names and shapes may not.

    Args:
        layers: A list from `describe_layers`, the run's first model.
        model: A model from the same `build_model`.
        source: Where `layers` came from, for the message.
        caller: The function given `build_model`, for the message.
    """
    found = describe_layers(model)
    if len(found) != len(layers):
        difference = f"{len(found)} prunable layers now, {len(layers)} in {source}"
    else:
        mismatch = [
            i
            for i, (now, first) in enumerate(zip(found, layers))
            if (now["type"], now["weights"]) != (first["type"], first["weights"])
        ]
        if not mismatch:
            return
        i = mismatch[0]
        difference = (
            f"prunable layer {i} is {found[i]['type']} with weights {found[i]['weights']} "
            f"now, {layers[i]['type']} with weights {layers[i]['weights']} in {source}"
        )
    raise ValueError(
        f"{caller}'s build_model returned a model of another architecture than the run's "
        "first one: "
        f"{difference}. A lottery run matches layers by position, so build_model must "
        "return the same architecture on every call; for a new architecture use a new out_dir."
    )


def _keys(model, layers):
    """The file key of each pruned weight, "layer/weight", named after `layers`."""
    return [
        (f"{layer['name']}/{masked.name}", masked)
        for layer, wrapper in zip(layers, find_wrappers(model))
        for masked in wrapper.masked_weights
    ]


def masks_of(model, layers):
    """A dict from "layer/weight" (names from `layers`) to the boolean mask."""
    return {
        key: keras.ops.convert_to_numpy(masked.mask.value) > 0
        for key, masked in _keys(model, layers)
    }


def thresholds_of(model, layers):
    """A dict from "layer/weight" to the last round's threshold (NaN before one)."""
    return {key: read_threshold(masked.threshold) for key, masked in _keys(model, layers)}


def set_masks(model, masks, layers):
    """Sets every mask of `model` from a `masks_of` dict and zeroes the pruned weights."""
    for key, masked in _keys(model, layers):
        masked.mask.assign(np.asarray(masks[key], dtype=masked.mask.dtype))
    apply_masks(model)


def copy_unit_masks(source, target):
    """Gives `target` the unit masks of `source` (same architecture) and applies them.

    Unit criteria (`tf_lottery.UnitNorm`, ...) mark pruned units in the wrappers'
    `unit_mask`, beside the kernel masks: a model rewound or reinitialized for a
    new round needs both, or its pruned units count as alive again and their
    biases and BatchNormalization parameters train.
    """
    for a, b in zip(find_rewind_wrappers(source), find_rewind_wrappers(target)):
        if a.unit_mask is not None:
            b.unit_mask.assign(a.unit_mask.value)
    apply_masks(target)


def _state_variables(model):
    """`model`'s weights less the masks, the wrappers' θ0 and rewind-point copies
    and `IterativePruning`'s stage.

    Those are stored once per run (θ0, the rewind point) or per round in masks.npz;
    a lottery run has no stage, and leaving it out keeps older runs loadable.
    """
    copies = {
        id(variable)
        for wrapper in find_rewind_wrappers(model)
        for saved in wrapper.saved_weights
        for variable in (saved.initial, saved.rewind_point)
    }
    copies.update(id(m.mask) for w in find_wrappers(model) for m in w.masked_weights)
    copies.update(id(w.pruning_stage) for w in find_wrappers(model))
    return [v for v in model.weights if id(v) not in copies]


def save_arrays(path, arrays, once=False):
    """Writes a dict of numpy arrays to a compressed `.npz` file, atomically.

    With `once=True` an existing file is kept (see `files.write_once`).
    """
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    (write_once if once else write_atomically)(path, buffer.getvalue())


def save_state(model, path, once=False):
    """Writes `model`'s weights, less masks and θ0/rewind copies, to a compressed `.npz`.

    With `once=True` an existing file is kept.
    """
    variables = _state_variables(model)
    save_arrays(
        path, {f"{i}": keras.ops.convert_to_numpy(v.value) for i, v in enumerate(variables)}, once
    )


def load_state(model, path):
    """Loads a `save_state` file into a model of the same architecture."""
    variables = _state_variables(model)
    with np.load(path) as archive:
        arrays = [archive[f"{i}"] for i in range(len(archive.files))]
    if [a.shape for a in arrays] != [tuple(v.shape) for v in variables]:
        raise ValueError(
            f"{path!r} holds {len(arrays)} arrays that do not fit the {len(variables)} "
            "weights of the model build_model returned. Load it with the build_model "
            "that wrote it."
        )
    for array, variable in zip(arrays, variables):
        variable.assign(array)
