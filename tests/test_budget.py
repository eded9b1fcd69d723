"""Pruning to a budget: stopping rules, per-layer targets, sensitivity, frozen layers."""

import keras
import numpy as np
import pytest
from conftest import compile_model
from conftest import data
from conftest import mlp

import tf_lottery as tl


class Score(keras.callbacks.Callback):
    """Writes a scripted 'score' into the logs and snapshots the weights each epoch."""

    def __init__(self, scores):
        super().__init__()
        self.scores = scores
        self.snapshots = []

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = self.scores[epoch]
        self.snapshots.append([v.numpy().copy() for v in self.model.weights])


def test_drop_rule_stops_and_restores_the_last_round_within_budget(capsys):
    model = compile_model(tl.wrap(mlp()))
    x, y = data()
    score = Score([0.90, 0.898, 0.89, 0.95, 0.95, 0.95])
    pruning = tl.IterativePruning(tl.PruneFraction(0.3), max_drop=0.005, monitor="score")
    model.fit(x, y, epochs=6, verbose=0, callbacks=[score, pruning])
    # Epoch 1: baseline 0.90 (dense), round 1. Epoch 2: 0.898, within, round 2.
    # Epoch 3: 0.89, 0.01 below: back to the state at the end of epoch 2, stop.
    assert pruning.rounds_done == 1
    out = capsys.readouterr().out
    assert "Pruning stopped after epoch 3" in out and "restored round 1" in out
    # Training went on after the restore, so compare the masks (which never
    # change again) and the state right after the restore via a second run.
    masks_then = score.snapshots[1]
    for variable, value in zip(model.weights, masks_then):
        if "mask" in variable.path:
            np.testing.assert_array_equal(variable.numpy(), value)


def test_drop_rule_restores_weights_exactly():
    model = compile_model(tl.wrap(mlp()))
    x, y = data()
    score = Score([0.90, 0.898, 0.80])
    model.fit(
        x,
        y,
        epochs=3,
        verbose=0,
        callbacks=[
            score,
            tl.IterativePruning(tl.PruneFraction(0.3), max_drop=0.005, monitor="score", verbose=0),
        ],
    )
    for variable, value in zip(model.weights, score.snapshots[1]):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)


def test_drop_rule_mode_min_watches_a_loss():
    model = compile_model(tl.wrap(mlp()))
    x, y = data()
    score = Score([1.0, 0.9, 1.002, 1.02, 1.0])  # lower is better
    pruning = tl.IterativePruning(
        tl.PruneFraction(0.3), max_drop=0.005, monitor="score", mode="min", verbose=0
    )
    model.fit(x, y, epochs=5, verbose=0, callbacks=[score, pruning])
    assert pruning.rounds_done == 2 and "epoch 4" in pruning.drop_rule.stopped
    assert "restored round 2" in pruning.drop_rule.stopped


def test_layer_targets_are_met_and_not_overshot_by_more_than_a_round():
    model = compile_model(tl.wrap(mlp()))
    x, y = data()
    targets = {"fc1": 0.5, "out": 0.3}
    history = model.fit(
        x,
        y,
        epochs=10,
        verbose=0,
        callbacks=[
            tl.IterativePruning(
                tl.PruneFraction(0.2, output_rate=0.2),
                layer_targets=targets,
                log_layers=True,
                verbose=0,
            )
        ],
    )
    for layer, target in targets.items():
        trajectory = [0.0] + history.history[f"sparsity/{layer}"]
        final = trajectory[-1]
        assert final >= target
        before_last_step = max(s for s in trajectory if s < target)
        assert final - before_last_step <= 0.2 * (1 - before_last_step) + 0.01  # one round's step


def test_frozen_layers_keep_their_weights_exactly():
    model = compile_model(tl.wrap(mlp()))
    x, y = data()
    frozen_before = [v.numpy().copy() for v in tl.find_wrappers(model)[0].layer.weights]
    out_before = tl.find_wrappers(model)[1].layer.kernel.numpy().copy()
    model.fit(
        x,
        y,
        epochs=3,
        verbose=0,
        callbacks=[tl.IterativePruning(tl.PruneFraction(0.3), frozen=["fc*"], verbose=0)],
    )
    for variable, value in zip(tl.find_wrappers(model)[0].layer.weights, frozen_before):
        np.testing.assert_array_equal(variable.numpy(), value)
    assert tl.sparsity(model)["fc1"].sparsity == 0 and tl.sparsity(model)["out"].sparsity > 0
    assert not np.array_equal(tl.find_wrappers(model)[1].layer.kernel.numpy(), out_before)
    # After the fit the layer trains again.
    model.fit(x, y, epochs=1, verbose=0)
    assert not np.array_equal(tl.find_wrappers(model)[0].layer.kernel.numpy(), frozen_before[0])


def test_sensitivity_leaves_the_model_identical_and_matches_hand_pruning(tmp_path):
    model = compile_model(tl.wrap(mlp()))
    x, y = data()
    model.fit(x, y, epochs=3, verbose=0)
    before = [v.numpy().copy() for v in model.weights]
    report = tl.sensitivity(model, (x, y), sparsities=(0.3, 0.6, 0.9), verbose=0)
    for a, b in zip(before, model.weights):
        np.testing.assert_array_equal(a, b.numpy())
    copy = compile_model(tl.wrap(mlp()))
    copy.set_weights(model.get_weights())
    tl.prune(copy, tl.PruneFraction(0.6, output_rate=0.6), layers=["fc1"])
    expected = copy.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]
    assert report.results["fc1"][1] == pytest.approx(expected)
    assert report.sparsities["fc1"] == pytest.approx([0.3, 0.6, 0.9], abs=0.01)
    qualities = tl.sensitivity(model, (x, y), qualities=(0.5, 1.0), verbose=0)
    copy.set_weights(model.get_weights())
    tl.prune(copy, tl.StdThreshold(1.0), layers=["out"])
    assert qualities.results["out"][1] == pytest.approx(
        copy.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]
    )
    # Settings, files and plot.
    settings = report.settings(max_drop=1.0)
    assert settings == {"fc1": 0.9, "out": 0.9}
    assert set(report.settings(max_drop=0.0)) == {"fc1", "out"}
    rates = report.fraction_rates(max_drop=1.0, rounds=3)
    assert rates["fc1"] == pytest.approx(1 - 0.1 ** (1 / 3))
    report.to_csv(str(tmp_path / "s.csv"))
    report.to_json(str(tmp_path / "s.json"))
    report.plot(str(tmp_path / "s.png"))
    assert open(tmp_path / "s.png", "rb").read(4) == b"\x89PNG"
    assert "fc1" in str(report)


def test_budget_bad_input():
    for kwargs, match in [
        (dict(max_drop=-0.1), "max_drop"),
        (dict(layer_targets={"fc1": 1.5}), "layer_targets"),
        (dict(layer_targets={"fc1": 1}), "layer_targets"),
        (dict(mode="up"), "mode"),
        (dict(frozen=[3]), "frozen"),
        (dict(restore_best="yes"), "restore_best"),
    ]:
        with pytest.raises(ValueError, match=match):
            tl.IterativePruning(tl.PruneFraction(), **kwargs)
    model = compile_model(tl.wrap(mlp()))
    x, y = data()
    before = [v.numpy().copy() for v in model.weights]
    for kwargs, match in [
        (dict(layer_targets={"fc9": 0.5}), "layer_targets.*fc9"),
        (dict(frozen=["conv*"]), "conv\\*"),
    ]:
        with pytest.raises(ValueError, match=match):
            model.fit(
                x,
                y,
                epochs=1,
                verbose=0,
                callbacks=[tl.IterativePruning(tl.PruneFraction(), **kwargs)],
            )
    for a, b in zip(before, model.weights):
        np.testing.assert_array_equal(a, b.numpy())
    # A monitor key shows up (or not) only once an epoch has run: the error comes
    # at the first round boundary, before any pruning.
    with pytest.raises(ValueError, match="monitor='val_accuracy'"):
        model.fit(
            x,
            y,
            epochs=1,
            verbose=0,
            callbacks=[tl.IterativePruning(tl.PruneFraction(), max_drop=0.01)],
        )
    assert tl.sparsity(model).sparsity == 0
    with pytest.raises(ValueError, match="sparsities"):
        tl.sensitivity(model, (x, y), sparsities=(0.5, 1.2))
    with pytest.raises(ValueError, match="metric='auc'"):
        tl.sensitivity(model, (x, y), metric="auc")
    with pytest.raises(ValueError, match="layers.*fc9"):
        tl.prune(model, tl.PruneFraction(), layers=["fc9"])


def test_erk_targets_work_as_layer_targets():
    model = compile_model(tl.wrap(mlp(inputs=64, hidden=64, outputs=3)))
    targets = tl.erk_targets(model, 0.8)
    # ERK keeps the small output layer denser; the total is the target.
    assert targets["out"] < targets["fc1"]
    sizes = {
        w.layer.name: w.layer.kernel.shape[0] * w.layer.kernel.shape[1]
        for w in tl.find_wrappers(model)
    }
    overall = sum(targets[n] * sizes[n] for n in sizes) / sum(sizes.values())
    assert overall == pytest.approx(0.8, abs=1e-3)
    x, y = data(inputs=64)
    model.fit(
        x,
        y,
        epochs=8,
        verbose=0,
        callbacks=[
            tl.IterativePruning(
                tl.PruneFraction(0.5, output_rate=0.5), layer_targets=targets, verbose=0
            )
        ],
    )
    for name, target in targets.items():
        assert tl.sparsity(model)[name].sparsity >= target
    # A layer ERK keeps dense (target 0) is never pruned.
    model = compile_model(tl.wrap(mlp()))
    model.fit(
        *data(),
        epochs=2,
        verbose=0,
        callbacks=[
            tl.IterativePruning(tl.PruneFraction(0.5), layer_targets={"out": 0.0}, verbose=0)
        ],
    )
    assert tl.sparsity(model)["out"].sparsity == 0 and tl.sparsity(model)["fc1"].sparsity > 0


def test_a_missing_monitor_is_reported_after_the_first_epoch_not_at_the_first_round():
    model = compile_model(tl.wrap(mlp()))
    x, y = data()
    pruning = tl.IterativePruning(tl.PruneFraction(0.3), every=5, max_drop=0.01, verbose=0)
    epochs = []

    class Count(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            epochs.append(epoch)

    with pytest.raises(ValueError, match="monitor='val_accuracy' is not in the epoch logs"):
        model.fit(x, y, epochs=10, verbose=0, callbacks=[Count(), pruning])
    assert epochs == [0]
