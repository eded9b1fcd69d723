"""The parts of the pruning callbacks, driven directly: DropRule, ScheduledMasks, SparsityLogs.

No `fit`: each hook or method is called as the callbacks call it, on a tiny
wrapped model, so that a failure points at the part and not at a training run.
"""

import math

import keras
import numpy as np
import pytest
from conftest import mlp

import tf_lottery as tl
from tf_lottery.callbacks.drop_rule import DropRule
from tf_lottery.callbacks.scheduled_masks import ScheduledMasks
from tf_lottery.callbacks.sparsity_logs import SparsityLogs


def _kernel(model, name):
    (wrapper,) = [w for w in tl.find_wrappers(model) if w.target_name == name]
    return wrapper.masked_weights[0]


def _sparsity(model, name):
    return 1.0 - float(np.mean(_kernel(model, name).mask.numpy()))


def _steps(model):
    return [int(w.pruning_step.numpy()) for w in tl.find_wrappers(model)]


class Steps(tl.Schedule):
    """Prunes to each sparsity at its step, as in `Schedule`'s docstring."""

    def __init__(self, sparsities):
        self.sparsities = dict(sparsities)
        self.asked = []

    def __call__(self, step):
        return step in self.sparsities, self.sparsities.get(step, 0.0)

    def last_due(self, first, last):
        self.asked.append((first, last))
        return super().last_due(first, last)


# DropRule


def test_drop_rule_without_max_drop_always_allows_and_needs_no_monitor():
    rule = DropRule()
    rule.check_logs({})
    assert rule.allows(mlp(), 0, {}, "round 1")
    assert rule.baseline is None and rule.stopped is None


def test_drop_rule_first_boundary_is_the_baseline_and_a_drop_within_budget_allows():
    rule = DropRule(max_drop=0.25)
    model = mlp()
    assert rule.allows(model, 0, {"val_accuracy": 0.75}, "round 0")
    assert rule.baseline == 0.75
    # Exactly at the budget still allows; the baseline stays the first value.
    assert rule.allows(model, 1, {"val_accuracy": 0.5}, "round 1")
    assert rule.allows(model, 2, {"val_accuracy": 1.0}, "round 2")
    assert rule.baseline == 0.75 and rule.stopped is None


def test_drop_rule_stops_restores_the_last_state_within_budget_and_stays_stopped():
    rule = DropRule(max_drop=0.05)
    model = tl.wrap(mlp())
    assert rule.allows(model, 0, {"val_accuracy": 0.9}, "round 0 (0.00% sparse)")
    tl.prune(model, tl.PruneFraction(0.5))
    kept = [v.numpy().copy() for v in model.weights]
    assert rule.allows(model, 1, {"val_accuracy": 0.88}, "round 1 (48.53% sparse)")
    tl.prune(model, tl.PruneFraction(0.5))
    assert not rule.allows(model, 2, {"val_accuracy": 0.8}, "round 2 (73.53% sparse)")
    assert rule.stopped.startswith("Pruning stopped after epoch 3: val_accuracy 0.8 is 0.1")
    assert "max_drop=0.05" in rule.stopped
    assert rule.stopped.endswith("; restored round 1 (48.53% sparse)")
    for a, b in zip(kept, model.weights):
        np.testing.assert_array_equal(a, b.numpy())
    # Once stopped, the logs are not read again.
    assert not rule.allows(model, 3, {}, "round 3")
    rule.reset()
    assert rule.baseline is None and rule.stopped is None


def test_drop_rule_without_restore_best_leaves_the_weights():
    rule = DropRule(max_drop=0.0, monitor="acc", restore_best=False)
    model = tl.wrap(mlp())
    assert rule.allows(model, 0, {"acc": 0.5}, "round 0")
    tl.prune(model, tl.PruneFraction(0.5))
    after = [v.numpy().copy() for v in model.weights]
    assert not rule.allows(model, 1, {"acc": 0.4}, "round 1")
    assert "restored" not in rule.stopped
    for a, b in zip(after, model.weights):
        np.testing.assert_array_equal(a, b.numpy())


def test_drop_rule_mode_min_watches_a_rise():
    rule = DropRule(max_drop=0.25, monitor="val_loss", mode="min")
    model = mlp()
    assert rule.allows(model, 0, {"val_loss": 1.0}, "round 0")
    assert rule.allows(model, 1, {"val_loss": 0.5}, "round 1")
    assert rule.allows(model, 2, {"val_loss": 1.25}, "round 2")
    assert not rule.allows(model, 3, {"val_loss": 1.5}, "round 3")
    assert "val_loss 1.5 is 0.5 from the dense baseline 1, more than max_drop=0.25" in rule.stopped


def test_drop_rule_bad_input_and_missing_monitor():
    with pytest.raises(ValueError, match="max_drop"):
        DropRule(max_drop=-0.1)
    with pytest.raises(ValueError, match="Received: monitor=''"):
        DropRule(max_drop=0.1, monitor="")
    with pytest.raises(ValueError, match="mode"):
        DropRule(max_drop=0.1, mode="avg")
    with pytest.raises(ValueError, match="restore_best"):
        DropRule(max_drop=0.1, restore_best="yes")
    rule = DropRule(max_drop=0.1)
    with pytest.raises(
        ValueError, match=r"monitor='val_accuracy' is not in the epoch logs.*'loss'"
    ):
        rule.check_logs({"loss": 1.0, "accuracy": 0.5})
    with pytest.raises(ValueError, match="not in the epoch logs"):
        rule.allows(mlp(), 0, {"loss": 1.0}, "round 0")


# ScheduledMasks


def test_scheduled_masks_prune_when_the_step_about_to_run_is_due():
    model = tl.wrap(mlp())
    wrappers = tl.find_wrappers(model)
    schedule = Steps({3: 0.5, 5: 0.5, 6: 0.75})
    masks = ScheduledMasks(model, wrappers, [(None, schedule, tl.PruneFraction())])
    assert masks.steps == 0
    masks.before_batch(0)  # step 1
    masks.before_batch(1)  # step 2
    assert masks.updates == 0 and _sparsity(model, "fc1") == 0
    masks.before_batch(2)  # step 3: due
    assert masks.updates == 1 and _sparsity(model, "fc1") == pytest.approx(0.5)
    # The count is saved with an update: two steps taken.
    assert _steps(model) == [2, 2]
    masks.before_batch(3)
    masks.before_batch(4)  # step 5: due, but 0.5 is reached already
    assert masks.updates == 1
    masks.before_batch(5)  # step 6
    assert masks.updates == 2 and _sparsity(model, "fc1") == pytest.approx(0.75)
    assert schedule.asked == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6)]


def test_scheduled_masks_count_a_group_of_steps_per_call_and_the_epoch_end():
    model = tl.wrap(mlp())
    wrappers = tl.find_wrappers(model)
    schedule = Steps({3: 0.5})
    masks = ScheduledMasks(model, wrappers, [(None, schedule, tl.PruneFraction())])
    masks.before_batch(0)  # steps 1-4 (steps_per_execution=4)
    masks.before_batch(4)  # steps 5-8: step 3 fell inside the last group
    assert masks.steps == 4 and masks.updates == 1
    assert schedule.asked == [(1, 1), (2, 5)]
    masks.end_epoch(10)
    assert masks.steps == 10 and _steps(model) == [10, 10]
    # The next fit goes on from the count saved in the wrappers.
    again = ScheduledMasks(model, wrappers, [(None, Steps({}), tl.PruneFraction())])
    assert again.steps == 10


@pytest.mark.parametrize("index", [-1, None])
def test_scheduled_masks_count_one_step_per_call_without_a_batch_index(index):
    # tfmot's hand-written loops call on_train_batch_begin(batch=-1).
    model = tl.wrap(mlp())
    masks = ScheduledMasks(model, tl.find_wrappers(model), [(None, Steps({}), tl.PruneFraction())])
    for _ in range(3):
        masks.before_batch(index)
    assert masks.steps == 2
    masks.end_epoch(None)
    assert masks.steps == 3 and _steps(model) == [3, 3]
    # A batch index that does not count up (a new epoch's 0) is one step.
    masks.before_batch(5)
    masks.before_batch(2)
    assert masks.steps == 4


def test_scheduled_masks_prune_each_group_on_its_own_schedule():
    model = tl.wrap(mlp())
    groups = [
        (["fc1"], Steps({1: 0.5}), tl.PruneFraction()),
        (["out"], Steps({2: 0.25}), tl.PruneFraction()),
    ]
    masks = ScheduledMasks(model, tl.find_wrappers(model), groups)
    masks.before_batch(0)
    assert _sparsity(model, "fc1") == pytest.approx(0.5) and _sparsity(model, "out") == 0
    masks.before_batch(1)
    assert _sparsity(model, "fc1") == pytest.approx(0.5)
    assert _sparsity(model, "out") == pytest.approx(0.25, abs=0.03)
    assert masks.updates == 2


# SparsityLogs


def test_sparsity_logs_give_the_total_and_with_log_layers_each_layer_and_threshold():
    model = tl.wrap(mlp())
    wrappers = tl.find_wrappers(model)
    short = SparsityLogs(model, wrappers, log_layers=False)
    assert short.figures == {"sparsity": 0.0}
    logs = SparsityLogs(model, wrappers, log_layers=True)
    assert sorted(logs.figures) == [
        "sparsity",
        "sparsity/fc1",
        "sparsity/out",
        "threshold/fc1/kernel",
        "threshold/out/kernel",
    ]
    assert math.isnan(logs.figures["threshold/fc1/kernel"])
    thresholds = tl.prune(model, tl.PruneFraction(0.5, output_rate=0.5))
    assert logs.figures["sparsity"] == 0.0  # read again only on update()
    logs.update()
    short.update()
    report = tl.sparsity(model)
    assert logs.figures["sparsity"] == short.figures["sparsity"] == report.sparsity > 0
    assert logs.figures["sparsity/fc1"] == pytest.approx(0.5)
    assert logs.figures["sparsity/out"] == pytest.approx(0.5)
    for name in ("fc1", "out"):
        key = f"{name}/kernel"
        assert logs.figures[f"threshold/{key}"] == pytest.approx(thresholds[key])
    assert logs.report.total == report.total
    assert keras.ops.convert_to_numpy(_kernel(model, "fc1").threshold.value) > 0


@pytest.mark.parametrize(
    "criterion, key",
    [
        (lambda: tl.UnitNorm(0.5), 1923299615),
        (lambda: tl.BatchNormScale(0.25), 327094864),
        (lambda: tl.PruneFraction(0.2), 412965961),
    ],
)
def test_a_stage_key_is_the_one_stages_saved_before_the_modules_moved_hold(criterion, key):
    # The keys tf_lottery 6654e2f computed, when UnitNorm lived in the module
    # tf_lottery.structured: a model saved mid-stage then resumes its stage.
    assert tl.IterativePruning(criterion(), every=2)._stage_key() == key
