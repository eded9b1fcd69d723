"""Guarantees that must hold wherever Keras users train: the 'Guarantees' README section."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import compile_model
from conftest import data
from conftest import mlp
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import tf_lottery as tl
from tf_lottery.criteria import PruneTarget

L = keras.layers
HERE = os.path.dirname(__file__)


def _masked(model):
    return [m for w in tl.find_wrappers(model) for m in w.masked_weights]


def _run_mirrored(mode):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": os.path.dirname(HERE)}
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, "mirrored_run.py"), mode],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.tensorflow
@pytest.mark.slow  # a subprocess with two logical devices
def test_mirrored_strategy_gives_the_single_device_masks():
    mirrored, single = _run_mirrored("mirrored"), _run_mirrored("single")
    assert mirrored["replicas"] == 2 and mirrored["copies"] == 2
    assert mirrored["replicas_agree"] and mirrored["pruned_are_zero"]
    assert mirrored["masks"] == single["masks"]
    assert mirrored["initial"] == single["initial"]


def test_mixed_precision_keeps_masks_exact():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = compile_model(tl.wrap(mlp()))
        x, y = data()
        model.fit(
            x,
            y,
            epochs=3,
            verbose=0,
            callbacks=[tl.IterativePruning(tl.PruneFraction(0.5), verbose=0)],
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for wrapper in tl.find_wrappers(model):
        for masked in wrapper.masked_weights:
            mask = masked.mask.numpy()
            assert set(np.unique(mask)) <= {0.0, 1.0}
            # Masks are uint8 (wrap's layout 3): never autocast to float16 with the weights.
            assert masked.variable.dtype == "float32" and masked.mask.dtype == "uint8"
            assert np.all(masked.variable.numpy()[mask == 0] == 0)
        for saved in wrapper.saved_weights:
            assert saved.initial.dtype == saved.variable.dtype


class _Crash(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == self.batch:
            raise RuntimeError("killed mid-epoch")


def test_backup_and_restore_after_a_crash_equals_an_uninterrupted_run(tmp_path):
    x, y = data(256)

    def fit(model, callbacks):
        model.fit(
            x,
            y,
            batch_size=32,
            epochs=6,
            shuffle=False,
            verbose=0,
            callbacks=[
                *callbacks,
                tl.IterativePruning(tl.PruneFraction(0.4), every=2, rewind=1, verbose=0),
            ],
        )

    keras.utils.set_random_seed(3)
    whole = compile_model(tl.wrap(mlp()))
    fit(whole, [])
    keras.utils.set_random_seed(3)
    crashed = compile_model(tl.wrap(mlp()))
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="killed"):
        fit(crashed, [backup, _Crash(epoch=3, batch=4)])
    keras.utils.set_random_seed(99)  # the restart must not depend on the seed
    restarted = compile_model(tl.wrap(mlp()))
    fit(restarted, [keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))])
    for a, b in zip(whole.weights, restarted.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.path)


def test_checkpoints_written_at_any_batch_are_sparse(tmp_path):
    model = compile_model(tl.wrap(mlp()))
    x, y = data()
    path = str(tmp_path / "ckpt_{epoch}_{batch}.weights.h5")
    checkpoint = keras.callbacks.ModelCheckpoint(path, save_weights_only=True, save_freq=1)
    model.fit(
        x,
        y,
        batch_size=32,
        epochs=3,
        verbose=0,
        callbacks=[tl.IterativePruning(tl.PruneFraction(0.5), verbose=0), checkpoint],
    )
    files = sorted(os.listdir(tmp_path))
    assert len(files) >= 8
    checked = 0
    for name in files:
        if not name.startswith("ckpt_2") and not name.startswith("ckpt_3"):
            continue  # epoch 1 trains the dense network
        restored = tl.wrap(mlp())
        restored.load_weights(str(tmp_path / name))
        for masked in _masked(restored):
            mask = masked.mask.numpy()
            assert (mask == 0).any()
            assert np.all(masked.variable.numpy()[mask == 0] == 0), name
            checked += 1
    assert checked >= 8


def test_batchnorm_dropout_and_tf_data_with_steps_per_epoch():
    import tensorflow as tf

    inputs = keras.Input((20,))
    h = L.Dense(32, name="fc1")(inputs)
    h = L.BatchNormalization()(h)
    h = L.Activation("relu")(h)
    h = L.Dropout(0.2)(h)
    outputs = L.Dense(3, name="out")(h)
    model = compile_model(tl.wrap(keras.Model(inputs, outputs)))
    x, y = data(256)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(256).batch(32).repeat()
    model.fit(
        dataset,
        steps_per_epoch=5,
        epochs=4,
        verbose=0,
        shuffle=False,
        callbacks=[tl.IterativePruning(tl.StdThreshold(0.5), every=2, verbose=0)],
    )
    assert tl.sparsity(model).sparsity > 0.3
    for masked in _masked(model):
        assert np.all(masked.variable.numpy()[masked.mask.numpy() == 0] == 0)
    plain = tl.strip(model)
    np.testing.assert_allclose(
        plain.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )


def test_loading_a_damaged_file_names_it(tmp_path):
    model = tl.wrap(mlp())
    good = str(tmp_path / "m.keras")
    model.save(good)
    truncated = str(tmp_path / "truncated.keras")
    open(truncated, "wb").write(open(good, "rb").read()[:200])
    with pytest.raises(ValueError, match="truncated.keras"):
        tl.load_model(truncated)
    foreign = str(tmp_path / "notes.keras")
    open(foreign, "w").write("not a model")
    with pytest.raises(ValueError, match="notes.keras.*not a zip"):
        tl.load_model(foreign)
    with pytest.raises(ValueError, match="missing.keras"):
        tl.load_model(str(tmp_path / "missing.keras"))
    loaded = tl.load_model(good)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


# Property tests: random shapes, blocks, rates and qualities.
shapes = st.tuples(st.integers(1, 40), st.integers(1, 40))
blocks = st.sampled_from([(1, 1), (2, 1), (4, 1), (1, 3), (16, 1)])


def _target(weight, mask, layer="fc"):
    return PruneTarget(layer, "kernel", "Dense", weight, mask)


@settings(max_examples=60, deadline=None)
@given(
    shape=shapes,
    block=blocks,
    rate=st.floats(0.01, 0.99),
    seed=st.integers(0, 10_000),
    rounds=st.integers(1, 4),
)
def test_property_fraction_masks_shrink_keep_one_and_count_exactly(
    shape, block, rate, seed, rounds
):
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=shape).astype("float32")
    mask = np.ones(shape, "float32")
    criterion = tl.PruneFraction(rate, block=block)
    for _ in range(rounds):
        r, c = block
        units_alive = int(
            np.ceil(np.array(shape) / block).prod()
            if mask.all()
            else sum(
                mask[i : i + r, j : j + c].any()
                for i in range(0, shape[0], r)
                for j in range(0, shape[1], c)
            )
        )
        expected = max(1, units_alive - round(rate * units_alive))
        ((new, _),) = list(criterion.compute_masks([_target(weight, mask)]))
        assert np.all(new <= mask)  # masks only shrink
        assert new.sum() >= 1  # one weight survives
        kept_units = sum(
            new[i : i + r, j : j + c].any()
            for i in range(0, shape[0], r)
            for j in range(0, shape[1], c)
        )
        assert kept_units == expected  # the hand-computed count
        mask = new


@settings(max_examples=60, deadline=None)
@given(shape=shapes, quality=st.floats(0, 3), seed=st.integers(0, 10_000))
def test_property_std_threshold_matches_the_formula(shape, quality, seed):
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=shape).astype("float32")
    mask = (rng.random(shape) > 0.3).astype("float32")
    if not mask.any():
        mask.flat[0] = 1
    ((new, threshold),) = list(tl.StdThreshold(quality).compute_masks([_target(weight, mask)]))
    assert np.all(new <= mask) and new.sum() >= 1
    expected = mask * (np.abs(weight) >= quality * np.std(weight[mask > 0]))
    if expected.any():
        np.testing.assert_array_equal(new, expected)
        assert threshold == pytest.approx(quality * float(np.std(weight[mask > 0])), rel=1e-5)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, block=blocks, rate=st.floats(0.01, 0.99), seed=st.integers(0, 10_000))
def test_property_global_equals_layer_scope_on_one_tensor(shape, block, rate, seed):
    weight = np.random.default_rng(seed).normal(size=shape).astype("float32")
    mask = np.ones(shape, "float32")
    ((local, _),) = list(tl.PruneFraction(rate, block=block).compute_masks([_target(weight, mask)]))
    ((whole, _),) = list(
        tl.PruneFraction(rate, block=block, scope="global").compute_masks([_target(weight, mask)])
    )
    np.testing.assert_array_equal(local, whole)


def test_every_public_constructor_rejects_bad_arguments():
    model = tl.wrap(mlp())
    cases = [
        (lambda: tl.wrap(mlp(), exclude=["fc9"]), "exclude"),
        (lambda: tl.wrap("model"), "Sequential or Functional"),
        (lambda: tl.PruneWrapper("dense"), "keras.layers.Layer"),
        (lambda: tl.StdThreshold(quality="high"), "quality"),
        (lambda: tl.StdThreshold(fixed_std="yes"), "fixed_std"),
        (lambda: tl.StdThreshold(per_layer=[1]), "per_layer"),
        (lambda: tl.PruneFraction(output_rate=2), "output_rate"),
        (lambda: tl.IterativePruning(tl.PruneFraction(), reset_optimizer="no"), "reset_optimizer"),
        (lambda: tl.IterativePruning(tl.PruneFraction(), every=1.5), "every"),
        (lambda: tl.rewind(model, to="epoch"), "to="),
        (lambda: tl.export_tflite(model, 42), "path"),
        (lambda: tl.sparsity(keras.Sequential([keras.Input((3,)), L.Dropout(0.1)])), "no prunable"),
    ]
    before = [v.numpy().copy() for v in model.weights]
    for make, match in cases:
        with pytest.raises(ValueError, match=match):
            make()
    for a, b in zip(before, model.weights):
        np.testing.assert_array_equal(a, b.numpy())
