"""`GradualPruning`: the Keras callback that prunes during `fit` on a step schedule."""

import keras

from tf_lottery import pruning
from tf_lottery.callbacks import freezing
from tf_lottery.callbacks.scheduled_masks import ScheduledMasks
from tf_lottery.callbacks.sparsity_logs import SparsityLogs
from tf_lottery.fraction import PruneFraction
from tf_lottery.criteria import check_criterion
from tf_lottery.schedules import Schedule
from tf_lottery.validators import check_bool
from tf_lottery.validators import check_choice


class GradualPruning(keras.callbacks.Callback):
    """Prunes a wrapped model during training, to the sparsity a schedule gives.

    Zhu & Gupta's gradual pruning, as tfmot's `prune_low_magnitude` does it: every
    `frequency` training steps the schedule gives a target sparsity, and
    `criterion` prunes the surviving weights of smallest magnitude until each
    layer (`PruneFraction(scope="layer")`, the default), the whole model
    (`scope="global"`) or each layer's Erdős–Rényi-kernel share
    (`scope="erk"`) is that sparse. The network is not rewound and the optimizer
    goes on: the weights recover from each small step while training.
    `IterativePruning` runs epoch rounds instead, with rewinding.

    Steps are numbered as in tfmot: the first training step of the model is step
    1, and the update due at step t is made before training step t. The step
    count lives in the wrappers (`pruning_step`), so it survives
    `reset_optimizer`, is saved by `model.save`, and a fit resumed from a saved
    model goes on where it stopped. With `steps_per_execution = N` Keras calls
    back once per N steps: an update due inside a group of steps is made before
    the next group, to the sparsity of its step.

    The work between batches is a few integer operations, except when an update
    is due. On JAX the callback brings the train step's state back into the
    variables (`model.jax_state_sync()`) before it prunes, so the new masks
    reach the next compiled step.

    Every epoch the callback adds `"sparsity"` to `logs`, and with
    `log_layers=True` the per-layer sparsity and thresholds, as
    `IterativePruning` does.

    Args:
        schedule: A step schedule: `tf_lottery.ConstantSparsity`,
            `tf_lottery.PolynomialDecay`, or your own `Schedule` with
            `unit = "step"`.
        criterion: A criterion that prunes to a target sparsity:
            `PruneFraction` (magnitude) or `RandomPrune`; its `rate` does not
            apply. `None` means `PruneFraction(scope="layer")`. Defaults to
            `None`.
        frozen: Layer names or shell-style patterns (`"conv*"`) of layers whose
            weights stay fixed during this fit; they are not pruned. Defaults
            to `()`.
        log_layers: Add per-layer sparsity and thresholds to `logs`. Defaults
            to `False`.
        verbose: `1` prints a line at the end of each epoch in which masks
            changed, `0` is silent. Defaults to `0`.

    Example:

    ```python
    model = tf_lottery.wrap(model)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    schedule = tf_lottery.PolynomialDecay(0.5, 0.8, begin_step=0, end_step=2000)
    model.fit(x, y, epochs=4, batch_size=128,
              callbacks=[tf_lottery.GradualPruning(schedule)])
    ```
    """

    def __init__(self, schedule, criterion=None, *, frozen=(), log_layers=False, verbose=0):
        super().__init__()
        if not isinstance(schedule, Schedule) or schedule.unit != "step":
            raise ValueError(
                "Expected schedule to be a step schedule such as "
                "tf_lottery.PolynomialDecay(0.5, 0.8, begin_step=0, end_step=2000) or "
                "tf_lottery.ConstantSparsity(0.8). For rounds every few epochs, use "
                f"IterativePruning(criterion, every=...). Received: schedule={schedule!r}"
            )
        self.schedule = schedule
        self.criterion = PruneFraction() if criterion is None else check_criterion(criterion)
        self.criterion.check_target()
        self.frozen = freezing.check_patterns(frozen)
        self.log_layers = check_bool(log_layers, "log_layers")
        self.verbose = int(check_choice(verbose, "verbose", (0, 1)))

    def on_train_begin(self, logs=None):
        wrappers = pruning.require_wrappers(self.model, "GradualPruning")
        pruning.check_criterion(self.criterion, wrappers)
        frozen = freezing.match_layers(self.model, self.frozen)
        layers = [w.target_name for w in wrappers if w not in frozen]
        self._masks = ScheduledMasks(
            self.model, wrappers, [(layers, self.schedule, self.criterion)]
        )
        self._logs = SparsityLogs(self.model, wrappers, self.log_layers)
        freezing.freeze(self.model, frozen)

    def on_train_end(self, logs=None):
        self._masks.save()
        freezing.release(self.model)

    def on_train_batch_begin(self, batch, logs=None):
        self._masks.before_batch(batch)

    def on_epoch_end(self, epoch, logs=None):
        self._masks.end_epoch((self.params or {}).get("steps"))
        if self._masks.updates:
            self._logs.update()
            if self.verbose:
                print(
                    f"Epoch {epoch + 1}: {self._masks.updates} mask updates, "
                    f"{self._logs.report.sparsity:.2%} of the weights pruned after "
                    f"{self._masks.steps} steps."
                )
            self._masks.updates = 0
        if logs is not None:
            logs.update(self._logs.figures)
