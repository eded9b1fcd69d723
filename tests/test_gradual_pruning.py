"""GradualPruning inside model.fit: masks follow the schedule step by step, on every backend."""

import os

import keras
import numpy as np
import pytest
from conftest import compile_model
from conftest import data
from conftest import mlp

import tf_lottery as tl

BACKEND = keras.backend.backend()

# tfmot 0.8.1 on tf_keras, same schedule, 80 weights: the kernel's sparsity after
# each of 16 training steps (the first step is step 1; updates at 2, 5, 8, 11).
SCHEDULE = dict(initial_sparsity=0.1, final_sparsity=0.9, begin_step=2, end_step=12, frequency=3)
TFMOT_SPARSITY = [0, 0.1, 0.1, 0.1, 0.625, 0.625, 0.625] + [0.85] * 3 + [0.9] * 6


def _dense(inputs=8, units=10, keep="rewind"):
    return tl.wrap(
        keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(units, name="d")]), keep=keep
    )


def _kernel_sparsity(model):
    (wrapper,) = tl.find_wrappers(model)
    return 1 - float(keras.ops.convert_to_numpy(wrapper.masks["kernel"].value).mean())


class _Record(keras.callbacks.Callback):
    """The kernel's sparsity after each batch; checks that pruned weights are zero."""

    def __init__(self):
        super().__init__()
        self.sparsity = []

    def on_train_batch_end(self, batch, logs=None):
        if BACKEND == "jax":
            self.model.jax_state_sync()
        self.sparsity.append(round(_kernel_sparsity(self.model), 4))
        for wrapper in tl.find_wrappers(self.model):
            for masked in wrapper.masked_weights:
                pruned = keras.ops.convert_to_numpy(masked.mask.value) == 0
                assert np.all(keras.ops.convert_to_numpy(masked.variable.value)[pruned] == 0)


def _fit(model, steps, callbacks, batch_size=1, epochs=1, **kwargs):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * batch_size, 8)).astype("float32")
    y = rng.normal(size=(steps * batch_size, 10)).astype("float32")
    return model.fit(
        x, y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=callbacks, **kwargs
    )


@pytest.mark.parametrize("keep", ["rewind", "masks"])
def test_masks_change_at_the_steps_tfmot_changes_them_while_adam_trains(keep):
    model = _dense(keep=keep)
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    record = _Record()
    _fit(model, 16, [tl.GradualPruning(tl.PolynomialDecay(**SCHEDULE)), record])
    assert record.sparsity == TFMOT_SPARSITY
    (wrapper,) = tl.find_wrappers(model)
    assert int(wrapper.pruning_step.numpy()) == 16


def test_a_mask_changed_mid_epoch_reaches_the_compiled_step():
    # No per-batch sync here: on JAX the callback itself must bring the state
    # back, or the epoch's end would overwrite its masks with the old ones.
    model = _dense()
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    _fit(model, 16, [tl.GradualPruning(tl.PolynomialDecay(**SCHEDULE))])
    assert _kernel_sparsity(model) == pytest.approx(0.9)
    (wrapper,) = tl.find_wrappers(model)
    pruned = wrapper.masks["kernel"].numpy() == 0
    assert np.all(wrapper.layer.kernel.numpy()[pruned] == 0)
    assert np.all(wrapper.layer.kernel.numpy()[~pruned] != 0)


@pytest.mark.skipif(BACKEND == "torch", reason="PyTorch has no steps_per_execution")
def test_with_steps_per_execution_an_update_waits_for_the_next_group():
    model = _dense()
    model.compile(keras.optimizers.SGD(0.0), "mse", steps_per_execution=4)
    record = _Record()
    _fit(model, 16, [tl.GradualPruning(tl.PolynomialDecay(**SCHEDULE)), record])
    # Groups start at steps 1, 5, 9 and 13; the latest due step before each:
    # none, 5, 8, 11 (step 2's 10% is passed over for step 5's 62.5%).
    assert record.sparsity == [0, 0.625, 0.85, 0.9]
    assert int(tl.find_wrappers(model)[0].pruning_step.numpy()) == 16


def test_the_step_count_survives_reset_optimizer_and_save_and_load(tmp_path):
    schedule = tl.PolynomialDecay(**SCHEDULE)
    whole = _dense()
    whole.compile(keras.optimizers.SGD(0.0), "mse")
    record = _Record()
    _fit(whole, 4, [tl.GradualPruning(schedule), record], epochs=4)
    assert record.sparsity == TFMOT_SPARSITY

    half = _dense()
    half.compile(keras.optimizers.SGD(0.0), "mse")
    _fit(half, 4, [tl.GradualPruning(schedule)], epochs=2)
    tl.reset_optimizer(half.optimizer)
    assert int(half.optimizer.iterations.numpy()) == 0
    path = os.path.join(tmp_path, "half.keras")
    half.save(path)
    loaded = keras.models.load_model(path)
    record = _Record()
    _fit(loaded, 4, [tl.GradualPruning(schedule), record], epochs=2)
    assert record.sparsity == TFMOT_SPARSITY[8:]


def test_global_scope_prunes_the_model_to_the_target():
    model = compile_model(tl.wrap(mlp()))
    x, y = data()
    schedule = tl.ConstantSparsity(0.6, begin_step=1, frequency=1)
    history = model.fit(
        x,
        y,
        epochs=2,
        batch_size=32,
        verbose=0,
        callbacks=[tl.GradualPruning(schedule, tl.PruneFraction(scope="global"), log_layers=True)],
    )
    report = tl.sparsity(model)
    assert report.sparsity == pytest.approx(0.6, abs=0.002)
    assert report["fc1"].sparsity != pytest.approx(report["out"].sparsity, abs=0.01)
    assert history.history["sparsity"][-1] == pytest.approx(report.sparsity)
    assert "sparsity/fc1" in history.history and "threshold/out/kernel" in history.history


def test_erk_scope_keeps_the_small_layer_denser(capsys):
    model = compile_model(tl.wrap(mlp(inputs=64, hidden=64, outputs=3)))
    x, y = data(inputs=64)
    schedule = tl.ConstantSparsity(0.8, begin_step=1, frequency=1)
    model.fit(
        x,
        y,
        epochs=1,
        batch_size=32,
        verbose=0,
        callbacks=[tl.GradualPruning(schedule, tl.PruneFraction(scope="erk"), verbose=1)],
    )
    report = tl.sparsity(model)
    assert report.sparsity == pytest.approx(0.8, abs=0.01)
    assert report["out"].sparsity < report["fc1"].sparsity
    assert "Epoch 1: 1 mask updates" in capsys.readouterr().out


def test_gradual_pruning_bad_input():
    with pytest.raises(ValueError, match="cannot aim at a target sparsity"):
        tl.GradualPruning(tl.ConstantSparsity(0.5), tl.StdThreshold(1.0))
    with pytest.raises(ValueError, match="cannot aim at a target sparsity"):
        tl.GradualPruning(tl.ConstantSparsity(0.5), tl.NMSparsity(2, 4))
    with pytest.raises(ValueError, match="step schedule"):
        tl.GradualPruning(tl.EveryEpochs(2))
    with pytest.raises(ValueError, match="step schedule"):
        tl.GradualPruning(0.5)
    with pytest.raises(ValueError, match="verbose"):
        tl.GradualPruning(tl.ConstantSparsity(0.5), verbose=2)
    model = compile_model(mlp())
    x, y = data()
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match="needs a model with PruneWrapper"):
        model.fit(x, y, verbose=0, callbacks=[tl.GradualPruning(tl.ConstantSparsity(0.5))])
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
