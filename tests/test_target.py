"""Prune to a target: MACs, parameters or latency of the shrunk model, not a rate per layer."""

import json
import os
import sys

import keras
import numpy as np
import pytest

import tf_lottery as tl
from tf_lottery import pruning
from tf_lottery.structured.shrink import ShrinkPlanner

L = keras.layers


def _cnn():
    """BN, a residual Add, a depthwise layer, Flatten into Dense: every kind a plan slices.

    The same weights on every call, so that two copies rank their units alike.
    """
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = L.Conv2D(16, 3, padding="same", name="conv1")(inputs)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU()(x)
    y = L.Conv2D(16, 3, padding="same", name="conv2")(x)
    x = L.Add()([x, y])
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.Conv2D(32, 1, name="conv3")(x)
    x = L.MaxPooling2D(3)(x)
    x = L.Flatten()(x)
    x = L.Dense(24, activation="relu", name="fc")(x)
    outputs = L.Dense(10, name="out")(x)
    return keras.Model(inputs, outputs)


def _pruned_units(model):
    """Pruned units, counted once per group of joined channels, as the ranking pools them."""
    return sum(int(np.sum(~alive)) for _, alive in _unit_alive(model))


def _with_drop(drop):
    """A fresh wrapped CNN with `drop` units pruned by the target's global ranking."""
    model = tl.wrap(_cnn())
    wrappers = tl.find_wrappers(model)
    targets = pruning.prune_targets(wrappers)
    masks, unit_masks = tl.UnitNorm().compute_unit_masks(targets, model, drop)
    pruning.write_masks(model, wrappers, None, targets, masks, unit_masks)
    return model


def _macs(model):
    return tl.shrink_report(model, tl.shrink(model)).macs_after


def test_half_the_macs_is_met_with_the_fewest_units_that_meet_it():
    model = tl.wrap(_cnn())
    target = tl.Target(macs=0.5)
    tl.prune(model, tl.UnitNorm(), target=target)
    report = tl.shrink_report(model, tl.shrink(model))
    assert report.macs_after <= 0.5 * report.macs_before
    assert report.macs_after > 0.4 * report.macs_before
    # One unit fewer and the target is missed: no more was pruned than needed.
    fewer = _with_drop(_pruned_units(model) - 1)
    assert _macs(fewer) > 0.5 * report.macs_before
    reached = tl.target_report(model, target)
    assert reached.meets and reached.achieved == report.macs_after
    assert reached.dense == report.macs_before and "met" in str(reached)


def test_the_plan_counts_what_shrink_builds():
    for drop in (1, 7, 20, 41):
        model = _with_drop(drop)
        planned = ShrinkPlanner(model).report(
            {
                "+".join(p.name for p in group.producers): np.flatnonzero(alive == 0)
                for group, alive in _unit_alive(model)
            }
        )
        real = tl.shrink_report(model, tl.shrink(model))
        assert [(r.layer, r.units_after, r.params_after, r.macs_after) for r in planned.layers] == [
            (r.layer, r.units_after, r.params_after, r.macs_after) for r in real.layers
        ]


def _unit_alive(model):
    wrappers = tl.find_wrappers(model)
    plan = tl.UnitNorm().unit_plan(pruning.prune_targets(wrappers), model, 0)
    return [(group, alive) for group, alive, _ in plan]


def test_a_parameter_count_is_a_ceiling():
    model = tl.wrap(_cnn())
    dense = tl.shrink_report(model, tl.strip(model)).params_before
    tl.prune(model, tl.UnitNorm(round_to=4), target=tl.Target(params=dense // 3))
    small = tl.shrink(model)
    assert small.count_params() <= dense // 3
    assert all(small.get_layer(n).filters % 4 == 0 for n in ("conv1", "conv3"))


def test_iterative_pruning_stops_at_the_target():
    model = tl.wrap(_cnn())
    target = tl.Target(macs=0.3)
    callback = tl.IterativePruning(
        tl.UnitNorm(0.2), rewind=None, reset_optimizer=False, target=target, verbose=0
    )
    callback.set_model(model)
    callback.on_train_begin()
    figures = []
    for epoch in range(12):
        callback.on_epoch_begin(epoch)
        callback.on_epoch_end(epoch, {})
        figures.append(tl.target_report(model, target))
    met = [r.meets for r in figures]
    first = met.index(True)
    assert all(met[first:]) and 1 <= first < 11
    assert callback.rounds_done == first + 1  # no round after the target was met
    assert figures[first - 1].achieved > figures[first].goal


def test_find_winning_ticket_runs_rounds_until_the_target(tmp_path):
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = (x.mean(axis=1) > 0).astype("int32")

    def build():
        model = keras.Sequential(
            [keras.Input((8,)), L.Dense(32, name="fc1"), L.Dense(16, name="fc2"), L.Dense(2)]
        )
        model.compile(
            optimizer="adam",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        return model

    target = tl.Target(params=0.5)
    history = tl.find_winning_ticket(
        build,
        (x, y),
        validation_data=(x, y),
        criterion=tl.UnitNorm(0.4),
        rounds=6,
        epochs_per_round=1,
        target=target,
        out_dir=str(tmp_path),
        verbose=0,
    )
    rounds = [r.round for r in history.rows]
    assert rounds == list(range(len(rounds))) and len(rounds) < 7
    last = tl.load_round(build, str(tmp_path), rounds[-1])
    before = tl.load_round(build, str(tmp_path), rounds[-2])
    assert tl.target_report(last, target).meets
    assert not tl.target_report(before, target).meets


def _table_files(tmp_path):
    table = {
        "device": "test phone",
        "fixed_ms": 0.1,
        "default_ms_per_mac": 1e-6,
        "layers": {
            "conv2": {"ms_per_mac": 2e-6},
            "conv3": {"units": [8, 16, 32], "ms": [0.02, 0.03, 0.05]},
        },
    }
    (tmp_path / "t.json").write_text(json.dumps(table))
    (tmp_path / "t.csv").write_text(
        "layer,units,ms,ms_per_mac\n*,,0.1,\nconv2,,,2e-6\nconv3,8,0.02,\nconv3,16,0.03,\n"
        "conv3,32,0.05,\n"
    )
    return tmp_path / "t.json", tmp_path / "t.csv"


def test_an_imported_latency_table_predicts_and_is_met(tmp_path):
    json_path, csv_path = _table_files(tmp_path)
    table = tl.LatencyTable.load(json_path)
    model = tl.wrap(_cnn())
    dense = tl.shrink_report(model, tl.strip(model))
    rows = {r.layer: r for r in dense.layers}
    others = sum(r.macs_before for name, r in rows.items() if name not in ("conv2", "conv3"))
    assert table.predict(dense) == pytest.approx(
        0.1 + 2e-6 * rows["conv2"].macs_before + 0.05 + 1e-6 * others
    )
    from_csv = tl.LatencyTable.load(csv_path)  # no default per MAC in the CSV
    assert from_csv.predict(dense) == pytest.approx(0.1 + 2e-6 * rows["conv2"].macs_before + 0.05)
    target = tl.Target(latency=0.5, table=str(json_path))
    tl.prune(model, tl.UnitNorm(), target=target)
    reached = tl.target_report(model, target)
    assert reached.meets and reached.achieved <= 0.5 * table.predict(dense)
    assert reached.achieved > 0.4 * reached.dense and "test phone" in reached.source


def _counted_ms(plain):
    return 1.0 + plain.count_params() / 1000


class _CountedMeter:
    def __init__(self, reference):
        self.dense = _counted_ms(reference)

    def ms(self, repeats=5):
        return self.dense

    def ratio(self, model):
        ratio = _counted_ms(model) / self.dense
        self.last = (ratio, ratio, ratio, 6)
        return ratio


class _CountedLatency(tl.Target):
    """Latency 'measured' as a function of the parameters: the search path, without noise."""

    def measure(self, plain):
        return _counted_ms(plain)

    def meter(self, reference):
        return _CountedMeter(reference)


def test_a_measured_target_restores_the_model_between_trials():
    model = tl.wrap(_cnn())
    target = _CountedLatency(latency=0.5)
    dense = target.measure(tl.strip(model))
    tl.prune(model, tl.UnitNorm(), target=target)
    reached = tl.target_report(model, target)
    assert reached.dense == dense and reached.meets
    assert callable(target.measure) and target.tolerance == 0.05
    # Only the final round is written: one round, not one per trial.
    assert {int(keras.ops.convert_to_numpy(w.pruning_round)) for w in tl.find_wrappers(model)} == {
        1
    }


def _pruned_convolutions():
    """Two 64-filter convolutions with 75% of their units pruned: clearly faster shrunk."""
    inputs = keras.Input((32, 32, 16))
    x = L.Conv2D(64, 3, padding="same", name="a")(inputs)
    x = L.Conv2D(64, 3, padding="same", name="b")(x)
    outputs = L.Dense(4, name="out")(L.GlobalAveragePooling2D()(x))
    model = tl.wrap(keras.Model(inputs, outputs))
    tl.prune(model, tl.UnitNorm(0.75))
    return model


@pytest.mark.tensorflow
@pytest.mark.slow
def test_litert_times_a_shrunk_model_faster_than_the_dense_one():
    model = _pruned_convolutions()
    dense = tl.litert_latency(tl.strip(model), repeats=3, invokes=20)
    small = tl.litert_latency(tl.shrink(model), repeats=3, invokes=20)
    assert 0 < small < dense


class _Clock:
    """LiteRT timings without LiteRT: each file takes its cost times a load that drifts."""

    def __init__(self, noise=0.0):
        self.load, self.noise = 1.0, noise
        self.rng = np.random.default_rng(0)

    def loaded(self, clock):
        class Loaded:
            def __init__(self, model, threads):
                self.cost = model.count_params()

            def warm(self, invokes):
                pass

            def time(self, invokes):
                clock.load *= 1.02  # the machine gets busier, timing after timing
                return self.cost * clock.load * (1 + clock.noise * clock.rng.standard_normal())

        return Loaded


def _dense_and_half():
    return (
        keras.Sequential([keras.Input((10,)), L.Dense(20)]),  # 220 parameters
        keras.Sequential([keras.Input((10,)), L.Dense(10), L.Dense(1, use_bias=False)]),  # 120
    )


def test_the_meter_times_in_alternating_pairs_so_a_drifting_load_cancels(monkeypatch):
    from tf_lottery.export import latency

    clock = _Clock()
    monkeypatch.setattr(latency, "_Loaded", clock.loaded(clock))
    dense, small = _dense_and_half()
    meter = tl.LatencyMeter(dense)
    ratio = meter.ratio(small)
    # Each pair is two timings 2% apart in load, in alternating order, so the
    # pairs' ratios are 120/220 times 1.02 or 1/1.02 and their median is exact.
    assert ratio == pytest.approx(120 / 220, rel=0.021)
    median, low, high, pairs = meter.last
    assert median == ratio and low <= median <= high and pairs == meter.min_pairs
    # Timed one after the other, the same drift would have made it 1.02**k off.
    clock.load = 1.0
    alone = tl.litert_latency(small, repeats=5) / tl.litert_latency(dense, repeats=5)
    assert abs(alone / (120 / 220) - 1) > 0.05


def test_the_meter_adds_pairs_until_the_ratio_is_precise_or_the_cap(monkeypatch):
    from tf_lottery.export import latency

    clock = _Clock(noise=0.05)
    monkeypatch.setattr(latency, "_Loaded", clock.loaded(clock))
    dense, small = _dense_and_half()
    meter = tl.LatencyMeter(dense, precision=0.03, max_pairs=200)
    meter.ratio(small)
    median, low, high, pairs = meter.last
    assert meter.min_pairs < pairs < 200
    assert max(median - low, high - median) <= 0.03 * median
    capped = tl.LatencyMeter(dense, precision=0.001, max_pairs=8)
    capped.ratio(small)
    assert capped.last[3] == 8


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"precision": 0}, "Received: precision=0"),
        ({"precision": 1.5}, "Received: precision=1.5"),
        ({"max_pairs": 3}, "Received: max_pairs=3"),
        ({"invokes": 0}, "Received: invokes=0"),
    ],
)
def test_a_bad_meter_argument_is_named(monkeypatch, kwargs, words):
    from tf_lottery.export import latency

    monkeypatch.setattr(latency, "_Loaded", _Clock().loaded(_Clock()))
    with pytest.raises(ValueError, match=words):
        tl.LatencyMeter(_dense_and_half()[0], **kwargs)


@pytest.mark.tensorflow
@pytest.mark.slow
def test_litert_meter_finds_a_shrunk_model_faster_and_a_model_as_fast_as_itself():
    model = _pruned_convolutions()
    meter = tl.LatencyMeter(tl.strip(model), invokes=20, max_pairs=20)
    assert meter.ratio(tl.shrink(model)) < 0.75
    itself = meter.ratio(tl.strip(model))
    assert 0.8 < itself < 1.25 and meter.last[1] <= itself <= meter.last[2]
    report = tl.target_report(model, tl.Target(latency=0.5, invokes=20))
    assert report.interval[0] <= report.achieved <= report.interval[1]
    assert "95% interval" in str(report) and "alternating pairs" in str(report)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({}, "exactly one of macs, params or latency"),
        ({"macs": 0.5, "params": 10}, "exactly one"),
        ({"macs": 1.5}, "Received: macs=1.5"),
        ({"macs": 0}, "Received: macs=0"),
        ({"latency": 2}, "twice as fast"),
        ({"params": 0.5, "table": "t.json"}, "Received: table='t.json'"),
        ({"macs": 0.5, "tolerance": 1.5}, "Received: tolerance=1.5"),
        ({"latency": 0.5, "table": {"conv1": 1}}, "LatencyTable"),
        ({"latency": 0.5, "precision": 2}, "Received: precision=2"),
    ],
)
def test_a_bad_target_names_the_argument(kwargs, words):
    with pytest.raises(ValueError, match="Received") as error:
        tl.Target(**kwargs)
    assert words in str(error.value)


def test_a_bad_table_entry_names_the_layer():
    with pytest.raises(ValueError, match=r"layers\['conv1'\]"):
        tl.LatencyTable({"conv1": {"units": [8, 4], "ms": [1.0, 2.0]}})


def test_a_target_needs_a_unit_criterion_and_changes_nothing_when_out_of_reach():
    model = tl.wrap(_cnn())
    with pytest.raises(ValueError, match="unit criterion"):
        tl.prune(model, tl.PruneFraction(0.2), target=tl.Target(macs=0.5))
    with pytest.raises(ValueError, match="per_layer"):
        tl.prune(model, tl.UnitNorm(per_layer={"fc": 0.5}), target=tl.Target(macs=0.5))
    before = [keras.ops.convert_to_numpy(w.value).copy() for w in model.weights]
    with pytest.raises(ValueError, match="cannot be reached"):
        tl.prune(model, tl.UnitNorm(), target=tl.Target(params=10))
    after = [keras.ops.convert_to_numpy(w.value) for w in model.weights]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    with pytest.raises(ValueError, match="Received: target=0.5"):
        tl.IterativePruning(tl.UnitNorm(), target=0.5)


@pytest.mark.slow
@pytest.mark.once  # the search is numpy on the host: one backend shows it
def test_mobilenet_v2_meets_half_the_macs():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples"))
    from models import cnn_zoo_model

    model = tl.wrap(cnn_zoo_model("MobileNetV2"))  # α=0.35, 96², BN statistics set
    target = tl.Target(macs=0.5)
    tl.prune(model, tl.UnitNorm(round_to=8), target=target)
    reached = tl.target_report(model, target)  # shrink checks the predictions itself
    assert reached.meets and reached.achieved > 0.45 * reached.dense, str(reached)
