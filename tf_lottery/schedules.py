"""Pruning schedules: when the masks are updated, and to what sparsity.

A schedule is a small serializable object with one question to answer, as in
tfmot's `pruning_schedule.py`: at this step, prune, and to what sparsity?
Calling it with a step returns `(should_prune, sparsity)`.

`EveryEpochs` counts epochs and leaves the sparsity to the criterion (one round
of `PruneFraction` or `StdThreshold`): the rounds of `IterativePruning`.
`ConstantSparsity` and `PolynomialDecay` count training steps and give a target
sparsity, with tfmot's formulas and step numbering: `GradualPruning` and the
`tf_lottery.compat.tfmot` API use them.

Steps are numbered as tfmot numbers them: the first training step of a model is
step 1, and a mask update that a schedule makes due at step t is in place for
training step t, computed from the weights after step t - 1.
"""

import keras
import numpy as np

from tf_lottery.validators import check_fraction
from tf_lottery.validators import check_int
from tf_lottery.validators import check_number
from tf_lottery.validators import is_int


class Schedule:
    """Base class of pruning schedules.

    A subclass implements `__call__(step)`, returning `(should_prune, sparsity)`:
    whether the masks are updated at `step`, and the target sparsity then
    (`None` for one round of the criterion's own rule). `unit` says what a step
    counts: `"step"` (training steps) or `"epoch"`.

    Example, a schedule of your own:

    ```python
    @keras.saving.register_keras_serializable()
    class Steps(tf_lottery.Schedule):
        # Prunes to each sparsity at its step: Steps({100: 0.5, 200: 0.8}).

        def __init__(self, sparsities):
            self.sparsities = {int(k): v for k, v in sparsities.items()}

        def __call__(self, step):
            return step in self.sparsities, self.sparsities.get(step, 0.0)

        def get_config(self):
            return {"sparsities": self.sparsities}
    ```
    """

    unit = "step"

    def __call__(self, step):
        """Returns `(should_prune, sparsity)` at `step`."""
        raise NotImplementedError

    def last_due(self, first, last):
        """The last step in `[first, last]` at which the masks are updated, or `None`.

        A callback that runs once for several steps (`steps_per_execution > 1`)
        asks for the steps since it last ran, and updates the masks once, to the
        sparsity of the latest due step. Subclasses may answer faster than this
        step-by-step search.
        """
        for step in range(last, first - 1, -1):
            if self(step)[0]:
                return step
        return None

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="tf_lottery")
class EveryEpochs(Schedule):
    """Epoch rounds: prune at the end of every `every`-th epoch after `start`.

    The schedule of `IterativePruning`: round n runs at the end of epoch
    `start + n * every` (counting epochs from 1), and each round prunes by the
    criterion's own rule, e.g. 20% of the survivors for `PruneFraction(0.2)`.

    Args:
        every: Prune after every `every`-th epoch, a positive integer. Defaults
            to `1`.
        start: Epochs to train before the first of them. Defaults to `0`.

    Example:

    ```python
    schedule = tf_lottery.EveryEpochs(every=5, start=2)
    schedule(7)   # (True, None): after 7 epochs, one round
    ```
    """

    unit = "epoch"

    def __init__(self, every=1, start=0):
        self.every = check_int(every, "every", minimum=1)
        self.start = check_int(start, "start")

    @property
    def first(self):
        """The number of epochs after which the first round runs."""
        return self.start + self.every

    def __call__(self, epochs):
        """`(True, None)` if a round runs once `epochs` epochs are trained."""
        return epochs > self.start and (epochs - self.start) % self.every == 0, None

    def get_config(self):
        return {"every": self.every, "start": self.start}


class _EveryFrequencySteps(Schedule):
    """Updates every `frequency` steps from `begin_step` to `end_step`, as tfmot does."""

    def _check_steps(self, begin_step, end_step, frequency, *, forever):
        self.begin_step = check_int(begin_step, "begin_step")
        if forever and end_step == -1:
            self.end_step = -1
        elif not is_int(end_step) or end_step <= begin_step:
            also = "-1 (prune until training ends) or " if forever else ""
            raise ValueError(
                f"Expected end_step to be {also}an integer greater than begin_step="
                f"{begin_step!r}. Received: end_step={end_step!r}"
            )
        else:
            self.end_step = int(end_step)
        self.frequency = check_int(frequency, "frequency", minimum=1)

    def _due(self, step):
        in_range = step >= self.begin_step and (self.end_step < 0 or step <= self.end_step)
        return in_range and (step - self.begin_step) % self.frequency == 0

    def last_due(self, first, last):
        if self.end_step >= 0:
            last = min(last, self.end_step)
        if last < max(first, self.begin_step):
            return None
        step = self.begin_step + (last - self.begin_step) // self.frequency * self.frequency
        return step if step >= first else None


@keras.saving.register_keras_serializable(package="tf_lottery")
class ConstantSparsity(_EveryFrequencySteps):
    """Prunes to the same target sparsity every `frequency` steps.

    tfmot's `ConstantSparsity`, with its arguments and step numbering: the masks
    are updated at steps `begin_step, begin_step + frequency, ...` up to
    `end_step`, each time to `target_sparsity`. Masks only shrink, so after the
    first update the others change nothing (in tfmot, weights pruned earlier can
    come back at a later update; here they stay pruned).

    Args:
        target_sparsity: The sparsity to reach, in [0, 1).
        begin_step: First step that updates the masks. Defaults to `0`.
        end_step: Last step that may update them, greater than `begin_step`, or
            `-1` to go on until training ends. Defaults to `-1`.
        frequency: Steps between updates, a positive integer. Defaults to `100`.

    Example:

    ```python
    schedule = tf_lottery.ConstantSparsity(0.8, begin_step=1000)
    pruning = tf_lottery.GradualPruning(schedule)
    ```
    """

    def __init__(self, target_sparsity, begin_step=0, end_step=-1, frequency=100):
        self.target_sparsity = check_fraction(target_sparsity, "target_sparsity", allow_zero=True)
        self._check_steps(begin_step, end_step, frequency, forever=True)

    def __call__(self, step):
        return self._due(step), self.target_sparsity

    def get_config(self):
        return {
            "target_sparsity": self.target_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
        }


@keras.saving.register_keras_serializable(package="tf_lottery")
class PolynomialDecay(_EveryFrequencySteps):
    """Zhu & Gupta's gradual pruning: sparsity rises fast, then levels off.

    tfmot's `PolynomialDecay` ("To prune, or not to prune", Zhu & Gupta 2017),
    with its arguments, step numbering and float32 arithmetic: at step t the
    sparsity is

        final + (initial - final) * (1 - p) ** power,
        p = min(1, max(0, (t - begin_step) / (end_step - begin_step)))

    and the masks are updated to it every `frequency` steps from `begin_step`
    to `end_step`.

    Args:
        initial_sparsity: Sparsity at `begin_step`, in [0, 1).
        final_sparsity: Sparsity from `end_step` on, in [0, 1).
        begin_step: First step that updates the masks.
        end_step: Last step that updates them, greater than `begin_step`.
        power: Exponent of the decay, a non-negative number. Defaults to `3`.
        frequency: Steps between updates, a positive integer. Defaults to `100`.

    Example:

    ```python
    # 50% at step 0 rising to 80% at step 2000, updated every 100 steps.
    schedule = tf_lottery.PolynomialDecay(0.5, 0.8, begin_step=0, end_step=2000)
    ```
    """

    def __init__(
        self, initial_sparsity, final_sparsity, begin_step, end_step, power=3, frequency=100
    ):
        self.initial_sparsity = check_fraction(
            initial_sparsity, "initial_sparsity", allow_zero=True
        )
        self.final_sparsity = check_fraction(final_sparsity, "final_sparsity", allow_zero=True)
        self.power = check_number(power, "power")
        self._check_steps(begin_step, end_step, frequency, forever=False)

    def __call__(self, step):
        # float32, in tfmot's order of operations, so that the same step gives
        # the same sparsity and therefore the same number of weights kept.
        # TensorFlow's float32 pow is correctly rounded; numpy's is not always.
        f32 = np.float32
        p = f32(step - self.begin_step) / f32(self.end_step - self.begin_step)
        p = min(f32(1), max(f32(0), p))
        decay = f32(np.float64(f32(1) - p) ** self.power)
        sparsity = f32(self.initial_sparsity - self.final_sparsity) * decay + f32(
            self.final_sparsity
        )
        return self._due(step), float(sparsity)

    def get_config(self):
        return {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self.final_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "power": self.power,
            "frequency": self.frequency,
        }
