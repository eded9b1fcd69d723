"""Schedules: when masks are updated and to what sparsity, as tfmot defines it."""

import keras
import pytest

import tf_lottery as tl


def test_constant_sparsity_prunes_every_frequency_steps_within_its_range():
    schedule = tl.ConstantSparsity(0.6, begin_step=3, end_step=11, frequency=4)
    due = [step for step in range(20) if schedule(step)[0]]
    assert due == [3, 7, 11]
    assert schedule(7) == (True, 0.6)
    forever = tl.ConstantSparsity(0.6, begin_step=0, frequency=5)
    assert [step for step in range(1000, 1011) if forever(step)[0]] == [1000, 1005, 1010]


def test_polynomial_decay_is_zhu_and_gupta():
    schedule = tl.PolynomialDecay(0.1, 0.9, begin_step=2, end_step=12, power=3, frequency=3)
    for step in range(0, 20):
        p = min(1.0, max(0.0, (step - 2) / 10))
        expected = 0.9 + (0.1 - 0.9) * (1 - p) ** 3
        assert schedule(step)[1] == pytest.approx(expected, abs=1e-6)
    assert [step for step in range(20) if schedule(step)[0]] == [2, 5, 8, 11]


def test_last_due_is_the_latest_due_step_in_a_range():
    schedule = tl.ConstantSparsity(0.5, begin_step=3, end_step=20, frequency=4)
    for last in range(0, 30):
        for first in range(0, last + 1):
            expected = max((s for s in range(first, last + 1) if schedule(s)[0]), default=None)
            assert schedule.last_due(first, last) == expected, (first, last)
    # The base class answers by asking step by step.
    steps = _Steps({4: 0.5, 9: 0.7})
    assert (
        steps.last_due(0, 3) is None and steps.last_due(0, 10) == 9 and steps.last_due(5, 8) is None
    )


def test_every_epochs_counts_rounds_after_start():
    schedule = tl.EveryEpochs(every=2, start=1)
    assert [epochs for epochs in range(1, 10) if schedule(epochs)[0]] == [3, 5, 7, 9]
    assert schedule(3) == (True, None) and schedule.first == 3
    assert schedule.unit == "epoch" and tl.ConstantSparsity(0.5).unit == "step"


@keras.saving.register_keras_serializable(package="tests")
class _Steps(tl.Schedule):
    def __init__(self, sparsities):
        self.sparsities = {int(k): v for k, v in sparsities.items()}

    def __call__(self, step):
        return step in self.sparsities, self.sparsities.get(step, 0.0)

    def get_config(self):
        return {"sparsities": self.sparsities}


@pytest.mark.parametrize(
    "schedule",
    [
        tl.EveryEpochs(3, start=2),
        tl.ConstantSparsity(0.5, begin_step=10, end_step=100, frequency=7),
        tl.PolynomialDecay(0.2, 0.8, begin_step=0, end_step=500, power=2, frequency=10),
    ],
)
def test_schedules_serialize(schedule):
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert type(clone) is type(schedule) and clone.get_config() == schedule.get_config()
    assert repr(clone) == repr(schedule)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: tl.ConstantSparsity(1.0), "target_sparsity"),
        (lambda: tl.ConstantSparsity(-0.1), "target_sparsity"),
        (lambda: tl.ConstantSparsity(0.5, begin_step=-1), "begin_step"),
        (lambda: tl.ConstantSparsity(0.5, begin_step=10, end_step=10), "end_step"),
        (lambda: tl.ConstantSparsity(0.5, begin_step=10, end_step=-2), "end_step"),
        (lambda: tl.ConstantSparsity(0.5, frequency=0), "frequency"),
        (lambda: tl.ConstantSparsity(0.5, frequency=2.5), "frequency"),
        (lambda: tl.PolynomialDecay(0.5, 1.0, 0, 100), "final_sparsity"),
        (lambda: tl.PolynomialDecay(1.2, 0.5, 0, 100), "initial_sparsity"),
        (lambda: tl.PolynomialDecay(0.1, 0.5, 100, 100), "end_step"),
        (lambda: tl.PolynomialDecay(0.1, 0.5, 100, -1), "end_step"),
        (lambda: tl.PolynomialDecay(0.1, 0.5, 0, 100, power=-1), "power"),
        (lambda: tl.PolynomialDecay(0.1, 0.5, 0, 100, frequency=0), "frequency"),
        (lambda: tl.EveryEpochs(every=0), "every"),
        (lambda: tl.EveryEpochs(start=-1), "start"),
    ],
)
def test_bad_arguments_name_themselves(make, match):
    with pytest.raises(ValueError, match=f"Received: .*{match}"):
        make()
