"""How wrappers write their variables: each weight once, and older files still load."""

import io
import os
import zipfile

import h5py

import numpy as np

import tf_lottery as tl
import keras

DATA = os.path.join(os.path.dirname(__file__), "data")


def _mlp():
    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(6, activation="relu", name="fc1"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(3, name="out"),
        ]
    )


def test_a_wrapped_file_holds_each_weight_once(tmp_path):
    plain = _mlp()
    plain.save(tmp_path / "plain.keras")
    wrapped = tl.wrap(plain)
    wrapped.save(tmp_path / "wrapped.keras")
    # Each weight once, beside the wrappers' own variables (masks, θ0, rewind
    # points, counters); layout 1 wrote every weight a second time.
    weights = sum(int(np.prod(v.shape)) for v in plain.weights)
    state = sum(
        int(np.prod(v.shape)) for w in tl.find_rewind_wrappers(wrapped) for v in w.state_variables()
    )
    with zipfile.ZipFile(tmp_path / "wrapped.keras") as archive:
        with h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as stored:
            sizes = []
            stored.visititems(
                lambda _, item: sizes.append(item.size) if isinstance(item, h5py.Dataset) else None
            )
    assert sum(sizes) == weights + state
    loaded = tl.load_model(tmp_path / "wrapped.keras")
    for a, b in zip(wrapped.weights, loaded.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_a_file_of_layout_1_loads_with_its_masks_and_saved_copies():
    # Written by tf_lottery before layout 2 (tests/data, made with that version).
    model = tl.load_model(os.path.join(DATA, "wrapped_layout1.keras"), compile=False)
    expected = np.load(os.path.join(DATA, "wrapped_layout1_expected.npz"))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(expected["x"])), expected["y"], atol=1e-6
    )
    for wrapper in tl.find_rewind_wrappers(model):
        for saved in wrapper.saved_weights:
            for slot in ("initial", "rewind_point"):
                np.testing.assert_array_equal(
                    keras.ops.convert_to_numpy(getattr(saved, slot).value),
                    expected[f"{wrapper.target_name}/{saved.name}/{slot}"],
                )
    for wrapper in tl.find_wrappers(model):
        for masked in wrapper.masked_weights:
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(masked.mask.value),
                expected[f"{wrapper.target_name}/{masked.name}/mask"],
            )
        assert wrapper.has_rewind_point
