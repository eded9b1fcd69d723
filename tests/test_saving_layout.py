"""How wrappers write their variables: each weight once, and older files still load."""

import io
import os
import zipfile

import h5py

import numpy as np
import pytest

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


# Each written by the tf_lottery of its layout (tests/data): wrapper layout 1 (before
# 2), wrapper layout 2 (before 3, as of commit 063f9b5), and an in-place state of
# layout 1 (wrapper layout 2), the last two by IterativePruning(rewind=1).
OLD_FILES = ["wrapped_layout1", "wrapped_layout2", "wrapped_in_place_layout1"]


@pytest.mark.parametrize("name", OLD_FILES)
def test_files_of_older_layouts_load_with_their_masks_and_saved_copies(name):
    model = tl.load_model(os.path.join(DATA, f"{name}.keras"), compile=False)
    expected = np.load(os.path.join(DATA, f"{name}_expected.npz"))
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


def _functional_mlp():
    inputs = keras.Input((8,))
    x = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(6, name="fc1")(inputs))
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(x))


def _numpy(variable):
    return keras.ops.convert_to_numpy(variable.value)


# Copies of each weight that `wrap(keep=...)` keeps.
COPIES = {"rewind": 1, "both": 2, "masks": 0}


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("keep", sorted(COPIES))
def test_keep_chooses_the_saved_copies_and_loading_rebuilds_the_same(tmp_path, keep, in_place):
    wrapped = tl.wrap(_functional_mlp(), keep=keep, in_place=in_place)
    tl.prune(wrapped, tl.PruneFraction(0.5))
    wrappers = tl.find_rewind_wrappers(wrapped)
    copies = {
        id(v): v for w in wrappers for s in w.saved_weights for v in (s.initial, s.rewind_point)
    }
    weights = sum(int(np.prod(v.shape)) for w in wrappers for v in w.layer.weights)
    assert sum(int(np.prod(v.shape)) for v in copies.values()) == COPIES[keep] * weights
    masks = [m.mask for w in tl.find_wrappers(wrapped) for m in w.masked_weights]
    assert {str(m.dtype) for m in masks} == {"uint8"}
    wrapped.save(tmp_path / "m.keras")
    loaded = tl.load_model(tmp_path / "m.keras")
    again = tl.find_rewind_wrappers(loaded)
    assert [w.keep for w in again] == [keep] * len(wrappers)
    for a, b in zip(wrappers, again):
        assert [(v.shape, v.dtype) for v in a.state_variables()] == [
            (v.shape, v.dtype) for v in b.state_variables()
        ]
        for va, vb in zip(a.state_variables(), b.state_variables()):
            np.testing.assert_array_equal(_numpy(va), _numpy(vb))


def test_wrapped_files_stay_close_to_the_plain_model_file(tmp_path):
    # The targets of issue 23 (optimizer slots aside: the models are not compiled):
    # masks only for gradual and one-shot pruning, masks and one copy for a lottery.
    plain = keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(300),
            keras.layers.Dense(100),
            keras.layers.Dense(10),
        ]
    )
    plain.save(tmp_path / "plain.keras")
    size = os.path.getsize(tmp_path / "plain.keras")
    for keep, most in (("masks", 1.3), ("rewind", 2.3)):
        tl.wrap(plain, keep=keep).save(tmp_path / f"{keep}.keras")
        assert os.path.getsize(tmp_path / f"{keep}.keras") / size <= most, keep


def test_a_bad_keep_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"keep.*Received: keep='all'"):
        tl.wrap(_functional_mlp(), keep="all")
    with pytest.raises(ValueError, match=r"keep.*Received: keep=None"):
        tl.PruneWrapper(keras.layers.Dense(3), keep=None)


def test_a_file_wrapped_in_place_loads_inside_a_name_scope(tmp_path):
    # A layer's path is the name scope it was built in; the saved layout names "fc1".
    model = tl.wrap(_functional_mlp(), in_place=True)
    x = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    model.save(tmp_path / "m.keras")
    with keras.name_scope("outer"):
        loaded = tl.load_model(tmp_path / "m.keras", compile=False)
    assert [w.layer.path for w in tl.find_rewind_wrappers(loaded)][0].startswith("outer/")
    np.testing.assert_allclose(_numpy_out(loaded, x), _numpy_out(model, x), atol=1e-6)


def _numpy_out(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))
