"""IterativePruning inside model.fit: masks hold, rewinds are exact, state resumes."""

import csv
import os
import warnings

import keras
import numpy as np
import pytest
from conftest import compile_model
from conftest import data
from conftest import mlp

import tf_lottery as tl


def wrapped_mlp():
    return compile_model(tl.wrap(mlp()))


def test_pruned_weights_stay_exactly_zero_while_adam_trains():
    model = wrapped_mlp()
    tl.prune(model, tl.PruneFraction(0.7))
    masks = {
        id(m.variable): m.mask.numpy() for w in tl.find_wrappers(model) for m in w.masked_weights
    }

    class CheckEveryBatch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            for wrapper in tl.find_wrappers(self.model):
                for masked in wrapper.masked_weights:
                    weight = masked.variable.numpy()
                    assert np.all(weight[masks[id(masked.variable)] == 0] == 0)

    x, y = data()
    before = [m.variable.numpy().copy() for w in tl.find_wrappers(model) for m in w.masked_weights]
    model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[CheckEveryBatch()])
    after = [m.variable.numpy() for w in tl.find_wrappers(model) for m in w.masked_weights]
    # The survivors did train.
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))


def test_rewind_init_resets_survivors_to_initial_weights_exactly():
    model = wrapped_mlp()
    initial = {
        id(s.variable): s.initial.numpy().copy()
        for w in tl.find_wrappers(model)
        for s in w.saved_weights
    }
    x, y = data()
    callback = tl.IterativePruning(tl.PruneFraction(0.5), every=2, rounds=1, verbose=0)

    class AfterRound(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                for wrapper in tl.find_wrappers(self.model):
                    for saved in wrapper.saved_weights:
                        mask = 1 if saved.mask is None else saved.mask.numpy()
                        np.testing.assert_array_equal(
                            saved.variable.numpy(), initial[id(saved.variable)] * mask
                        )
                self.checked = True

    after_round = AfterRound()
    model.fit(x, y, epochs=2, verbose=0, callbacks=[callback, after_round])
    assert after_round.checked


def test_rewind_to_epoch_k_uses_the_weights_after_k_epochs():
    model = wrapped_mlp()
    x, y = data()
    snapshots = {}

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots[epoch + 1] = [
                s.variable.numpy().copy()
                for w in tl.find_wrappers(self.model)
                for s in w.saved_weights
            ]

    # Snapshot runs before IterativePruning so it sees the trained, unpruned weights.
    callback = tl.IterativePruning(tl.PruneFraction(0.5), every=3, rounds=1, rewind=1, verbose=0)
    model.fit(x, y, epochs=3, verbose=0, callbacks=[Snapshot(), callback])
    saved = [s for w in tl.find_wrappers(model) for s in w.saved_weights]
    for s, after_one in zip(saved, snapshots[1]):
        mask = 1 if s.mask is None else s.mask.numpy()
        np.testing.assert_array_equal(s.variable.numpy(), after_one * mask)
        np.testing.assert_array_equal(s.rewind_point.numpy(), after_one)


def test_rewind_none_keeps_training_from_the_trained_weights():
    model = wrapped_mlp()
    x, y = data()
    trained = {}

    class Keep(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            trained.update(
                {
                    id(m.variable): m.variable.numpy().copy()
                    for w in tl.find_wrappers(self.model)
                    for m in w.masked_weights
                }
            )

    model.fit(
        x,
        y,
        epochs=1,
        verbose=0,
        callbacks=[Keep(), tl.IterativePruning(tl.StdThreshold(1.0), rewind=None, verbose=0)],
    )
    for wrapper in tl.find_wrappers(model):
        for m in wrapper.masked_weights:
            np.testing.assert_array_equal(
                m.variable.numpy(), trained[id(m.variable)] * m.mask.numpy()
            )


def test_schedule_rounds_and_target_sparsity():
    model = wrapped_mlp()
    x, y = data()
    history = model.fit(
        x,
        y,
        epochs=9,
        verbose=0,
        callbacks=[
            tl.IterativePruning(
                tl.PruneFraction(0.5, output_rate=0.5),
                every=2,
                start=1,
                rounds=3,
                log_layers=True,
            )
        ],
    )
    # Rounds after epochs 3, 5 and 7; the logs show the sparsity at each epoch's end.
    expected = [0, 0, 0.5, 0.5, 0.75, 0.75, 0.875, 0.875, 0.875]
    np.testing.assert_allclose(history.history["sparsity"], expected, atol=0.01)
    assert len(history.history["threshold/fc1/kernel"]) == 9
    model = wrapped_mlp()
    model.fit(
        x,
        y,
        epochs=10,
        verbose=0,
        callbacks=[
            tl.IterativePruning(
                tl.PruneFraction(0.5, output_rate=0.5), target_sparsity=0.7, verbose=0
            )
        ],
    )
    assert tl.sparsity(model).sparsity == pytest.approx(0.75, abs=0.01)


def test_round_line_and_logs_in_csv(tmp_path, capsys):
    model = wrapped_mlp()
    x, y = data()
    path = os.path.join(tmp_path, "log.csv")
    pruning = tl.IterativePruning(tl.PruneFraction(0.2), log_layers=True)
    model.fit(x, y, epochs=2, verbose=0, callbacks=[pruning, keras.callbacks.CSVLogger(path)])
    out = capsys.readouterr().out
    assert "Pruning round 1 after epoch 1" in out and "Pruning round 2 after epoch 2" in out
    rows = list(csv.DictReader(open(path)))
    # Each epoch's row has the sparsity the model has at its end, after its round.
    assert float(rows[0]["sparsity/fc1"]) == pytest.approx(0.2, abs=0.01)
    assert float(rows[1]["sparsity/fc1"]) == pytest.approx(0.36, abs=0.01)
    assert float(rows[1]["sparsity"]) == pytest.approx(tl.sparsity(model).sparsity)


def test_default_logs_and_round_line_stay_short(capsys):
    inputs = keras.Input((20,))
    x = inputs
    for _ in range(40):
        x = keras.layers.Dense(8)(x)
    model = compile_model(tl.wrap(keras.Model(inputs, x)))
    x, y = data()
    history = model.fit(
        x,
        y[:, None] % 8,
        epochs=1,
        verbose=0,
        callbacks=[tl.IterativePruning(tl.PruneFraction(0.5))],
    )
    assert [k for k in history.history if "sparsity" in k or "threshold" in k] == ["sparsity"]
    assert history.history["sparsity"][0] == pytest.approx(tl.sparsity(model).sparsity)
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "Pruning round" in line]
    assert len(line) < 120, line


def test_resume_after_save_and_load_equals_an_uninterrupted_run(tmp_path):
    x, y = data()

    def callback():
        return tl.IterativePruning(tl.PruneFraction(0.3), every=2, rewind=1, verbose=0)

    keras.utils.set_random_seed(1)
    whole = wrapped_mlp()
    whole.fit(x, y, epochs=6, batch_size=128, shuffle=False, verbose=0, callbacks=[callback()])

    keras.utils.set_random_seed(1)
    first = wrapped_mlp()
    first.fit(x, y, epochs=3, batch_size=128, shuffle=False, verbose=0, callbacks=[callback()])
    path = os.path.join(tmp_path, "half.keras")
    first.save(path)
    second = keras.models.load_model(path)
    second.fit(
        x,
        y,
        epochs=6,
        initial_epoch=3,
        batch_size=128,
        shuffle=False,
        verbose=0,
        callbacks=[callback()],
    )
    for a, b in zip(whole.weights, second.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    for w in tl.find_wrappers(second):
        assert int(w.pruning_round.numpy()) == 3


def test_arguments_stay_readable_as_attributes():
    pruning = tl.IterativePruning(
        tl.PruneFraction(), every=3, start=2, max_drop=0.01, monitor="val_loss", mode="min"
    )
    assert (pruning.every, pruning.start, pruning.schedule.first) == (3, 2, 5)
    assert (pruning.max_drop, pruning.monitor, pruning.mode, pruning.restore_best) == (
        0.01,
        "val_loss",
        "min",
        True,
    )


def test_callback_bad_input():
    with pytest.raises(ValueError, match="criterion"):
        tl.IterativePruning("magnitude")
    with pytest.raises(ValueError, match="every"):
        tl.IterativePruning(tl.PruneFraction(), every=0)
    with pytest.raises(ValueError, match="start"):
        tl.IterativePruning(tl.PruneFraction(), start=-1)
    with pytest.raises(ValueError, match="rounds"):
        tl.IterativePruning(tl.PruneFraction(), rounds=0)
    with pytest.raises(ValueError, match="target_sparsity"):
        tl.IterativePruning(tl.PruneFraction(), target_sparsity=1.5)
    with pytest.raises(ValueError, match="rewind=5"):
        tl.IterativePruning(tl.PruneFraction(), every=2, start=1, rewind=5)
    with pytest.raises(ValueError, match="rewind"):
        tl.IterativePruning(tl.PruneFraction(), rewind="late")
    with pytest.raises(ValueError, match="verbose"):
        tl.IterativePruning(tl.PruneFraction(), verbose=3)


def test_callback_on_a_model_without_wrappers_fails_before_training():
    model = compile_model(mlp())
    x, y = data()
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match="needs a model with PruneWrapper"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[tl.IterativePruning(tl.PruneFraction())])
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_unknown_per_layer_name_fails_before_training():
    model = wrapped_mlp()
    x, y = data()
    with pytest.raises(ValueError, match="per_layer.*fc9"):
        model.fit(
            x,
            y,
            epochs=1,
            verbose=0,
            callbacks=[tl.IterativePruning(tl.StdThreshold(per_layer={"fc9": 1.0}))],
        )


def test_deterministic_masks_with_set_random_seed():
    x, y = data()
    runs = []
    for _ in range(2):
        keras.utils.set_random_seed(7)
        model = wrapped_mlp()
        model.fit(
            x,
            y,
            epochs=4,
            verbose=0,
            callbacks=[tl.IterativePruning(tl.RandomPrune(0.3), verbose=0)],
        )
        runs.append([m.mask.numpy() for w in tl.find_wrappers(model) for m in w.masked_weights])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def _cnn_with_batchnorm():
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(h))


def _cnn_data():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=(64, 8, 8, 1)).astype("float32")
    return x, rng.integers(0, 3, size=64)


def _bn_values(model):
    (bn,) = [w for w in tl.find_rewind_wrappers(model) if w.layer.name == "bn"]
    return {s.name: s.variable.numpy().copy() for s in bn.saved_weights}


class _RecordAtEpochEnd(keras.callbacks.Callback):
    """Records the BN weights at each epoch end, before the pruning round."""

    def __init__(self):
        super().__init__()
        self.values = []

    def on_epoch_end(self, epoch, logs=None):
        self.values.append(_bn_values(self.model))


@pytest.mark.parametrize("rewind", ["init", 1])
def test_a_rewind_resets_the_whole_model_batchnorm_statistics_included(rewind):
    model = compile_model(tl.wrap(_cnn_with_batchnorm()))
    assert isinstance(model.get_layer("rewind_bn"), tl.RewindWrapper)
    initial = _bn_values(model)
    record = _RecordAtEpochEnd()
    x, y = _cnn_data()
    pruning = tl.IterativePruning(tl.PruneFraction(0.5), every=2, rewind=rewind, verbose=0)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[record, pruning])
    assert pruning.rounds_done == 1
    trained = record.values[-1]
    assert not np.allclose(trained["moving_mean"], initial["moving_mean"])
    assert not np.allclose(trained["gamma"], initial["gamma"])
    expected = initial if rewind == "init" else record.values[0]
    after = _bn_values(model)
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        np.testing.assert_array_equal(after[name], expected[name], err_msg=name)


def test_frozen_layers_are_not_rewound():
    model = compile_model(tl.wrap(_cnn_with_batchnorm()))
    record = _RecordAtEpochEnd()
    x, y = _cnn_data()
    pruning = tl.IterativePruning(tl.PruneFraction(0.5), frozen=["bn"], verbose=0)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[record, pruning])
    after = _bn_values(model)
    for name, value in record.values[-1].items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)


def test_rewind_wrappers_survive_a_keras_round_trip(tmp_path):
    model = compile_model(tl.wrap(_cnn_with_batchnorm()))
    x, y = _cnn_data()
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    path = os.path.join(tmp_path, "cnn.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(tl.find_rewind_wrappers(model), tl.find_rewind_wrappers(loaded)):
        assert type(a) is type(b)
        for sa, sb in zip(a.saved_weights, b.saved_weights):
            np.testing.assert_array_equal(sa.initial.numpy(), sb.initial.numpy())
    plain = tl.strip(loaded)
    assert not tl.find_rewind_wrappers(plain)
    np.testing.assert_allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_a_second_stage_with_another_criterion_prunes_its_own_rounds():
    x, y = data()
    keras.utils.set_random_seed(0)
    model = wrapped_mlp()
    first = tl.IterativePruning(tl.PruneFraction(0.3), every=2, rounds=3, verbose=0)
    model.fit(x, y, epochs=6, batch_size=64, verbose=0, callbacks=[first])
    after_first = tl.sparsity(model).sparsity
    second = tl.IterativePruning(tl.StdThreshold(1.0), every=2, rounds=2, rewind=None, verbose=0)
    model.fit(x, y, epochs=4, batch_size=64, verbose=0, callbacks=[second])
    assert (second.stage_rounds, second.rounds_done) == (2, 5)
    assert tl.sparsity(model).sparsity > after_first
    # A third stage, of whole units, prunes units too.
    third = tl.IterativePruning(tl.UnitNorm(0.3), rounds=1, rewind=None, verbose=0)
    model.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[third])
    unit_mask = tl.find_wrappers(model)[0].unit_mask.numpy()
    assert third.stage_rounds == 1 and 0 < (unit_mask == 0).sum() < unit_mask.size
    # shrink removes those units (and any whose outgoing weights all went earlier).
    assert tl.shrink(model).get_layer("fc1").units <= (unit_mask == 1).sum()


def test_a_new_stage_that_continues_the_epoch_count_is_not_taken_for_a_resume():
    x, y = data()
    model = wrapped_mlp()
    first = tl.IterativePruning(tl.PruneFraction(0.3), every=2, rounds=2, verbose=0)
    model.fit(x, y, epochs=4, batch_size=64, verbose=0, callbacks=[first])
    second = tl.IterativePruning(tl.PruneFraction(0.5), every=2, rounds=1, verbose=0)
    model.fit(x, y, epochs=6, initial_epoch=4, batch_size=64, verbose=0, callbacks=[second])
    assert (second.stage_rounds, second.rounds_done) == (1, 3)


def test_resuming_a_later_stage_with_initial_epoch_keeps_its_rounds_absolute(tmp_path, capsys):
    x, y = data()
    model = wrapped_mlp()

    def stage(verbose=0):
        return tl.IterativePruning(tl.StdThreshold(1.0), every=2, rounds=2, verbose=verbose)

    first = tl.IterativePruning(tl.PruneFraction(0.3), every=2, rounds=3, verbose=0)
    model.fit(x, y, epochs=6, batch_size=64, verbose=0, callbacks=[first])
    model.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[stage()])
    path = os.path.join(tmp_path, "stage.keras")
    model.save(path)
    resumed = keras.models.load_model(path)
    resume = stage()
    resumed.fit(x, y, epochs=6, initial_epoch=2, batch_size=64, verbose=0, callbacks=[resume])
    # One more round at epoch 4, none at epoch 6: the round before the save counts.
    assert (resume.stage_rounds, resume.rounds_done) == (2, 5)
    again = stage(verbose=1)
    resumed.fit(x, y, epochs=8, initial_epoch=6, batch_size=64, verbose=0, callbacks=[again])
    assert again.rounds_done == 5
    assert "a stage whose 2 rounds are done" in capsys.readouterr().out


def test_a_new_stage_whose_target_is_already_reached_warns():
    x, y = data()
    model = wrapped_mlp()
    tl.prune(model, tl.PruneFraction(0.6))
    pruning = tl.IterativePruning(tl.PruneFraction(0.2), target_sparsity=0.5, verbose=0)
    with pytest.warns(
        UserWarning, match=r"already 5\d\.\d\d% sparse, at or past target_sparsity=0.5"
    ):
        model.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[pruning])
    assert pruning.stage_rounds == 0


def test_a_round_with_rewind_on_the_last_epoch_warns_that_the_model_is_untrained():
    x, y = data()
    model = wrapped_mlp()
    pruning = tl.IterativePruning(tl.PruneFraction(0.5), every=2, rounds=1, verbose=0)
    with pytest.warns(
        UserWarning, match=r"end of the last epoch \(2\) and rewound the model to θ0"
    ):
        model.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[pruning])
    wrapper = tl.find_wrappers(model)[0]
    np.testing.assert_array_equal(
        wrapper.layer.kernel.numpy(),
        wrapper.initial_weights["kernel"].numpy() * wrapper.masks["kernel"].numpy(),
    )


@pytest.mark.parametrize("epochs, rewind", [(3, "init"), (2, None)])
def test_a_last_epoch_that_trains_or_does_not_rewind_gives_no_warning(epochs, rewind):
    x, y = data()
    model = wrapped_mlp()
    pruning = tl.IterativePruning(tl.PruneFraction(0.5), every=2, rewind=rewind, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.fit(x, y, epochs=epochs, batch_size=64, verbose=0, callbacks=[pruning])
    assert pruning.stage_rounds == 1


@pytest.mark.parametrize("rewind", ["init", 1])
def test_a_rewinding_callback_refuses_a_model_wrapped_without_copies_before_it_trains(rewind):
    model = compile_model(tl.wrap(mlp(), keep="masks"))
    before = [v.numpy().copy() for v in model.weights]
    x, y = data()
    pruning = tl.IterativePruning(tl.PruneFraction(0.5), every=2, rewind=rewind, verbose=0)
    with pytest.raises(ValueError, match=r"rewind=.*keep='masks'.*wrap\(model, keep='rewind'\)"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[pruning])
    for variable, value in zip(model.weights, before):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_pruning_without_rewinding_needs_no_copies():
    model = compile_model(tl.wrap(mlp(), keep="masks"))
    x, y = data()
    pruning = tl.IterativePruning(tl.PruneFraction(0.5), rewind=None, rounds=1, verbose=0)
    model.fit(x, y, epochs=2, verbose=0, callbacks=[pruning])
    assert tl.sparsity(model).sparsity > 0.4
    before = [v.numpy().copy() for v in model.weights]
    with pytest.raises(ValueError, match="keep='masks'"):
        tl.rewind(model)
    for variable, value in zip(model.weights, before):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_a_rewind_to_theta0_is_refused_once_the_rewind_point_replaced_it():
    # keep="rewind" holds one copy: after rewind=1 saved its point, θ0 is gone.
    model = wrapped_mlp()
    x, y = data()
    late = tl.IterativePruning(tl.PruneFraction(0.5), every=2, rewind=1, rounds=1, verbose=0)
    model.fit(x, y, epochs=3, verbose=0, callbacks=[late])
    before = [v.numpy().copy() for v in model.weights]
    with pytest.raises(ValueError, match=r"replaced θ0.*keep='both'"):
        tl.rewind(model, "initial")
    again = tl.IterativePruning(tl.PruneFraction(0.5), rounds=1, verbose=0)
    with pytest.raises(ValueError, match=r"rewind='init'.*replaced θ0"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[again])
    for variable, value in zip(model.weights, before):
        np.testing.assert_array_equal(variable.numpy(), value)
    tl.rewind(model, "rewind_point")


def test_keep_both_rewinds_to_theta0_after_a_rewind_point():
    model = compile_model(tl.wrap(mlp(), keep="both"))
    theta0 = {
        id(s.variable): s.variable.numpy().copy()
        for w in tl.find_rewind_wrappers(model)
        for s in w.saved_weights
    }
    x, y = data()
    late = tl.IterativePruning(tl.PruneFraction(0.5), every=2, rewind=1, rounds=1, verbose=0)
    model.fit(x, y, epochs=3, verbose=0, callbacks=[late])
    tl.rewind(model, "initial")
    for wrapper in tl.find_rewind_wrappers(model):
        for saved in wrapper.saved_weights:
            mask = 1 if saved.mask is None else saved.mask.numpy()
            np.testing.assert_array_equal(saved.variable.numpy(), theta0[id(saved.variable)] * mask)
