"""`IterativePruning`: the Keras callback that prunes and rewinds at epoch ends."""

import keras

from tf_lottery import pruning
from tf_lottery.criteria import Criterion
from tf_lottery.report import sparsity


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


class IterativePruning(keras.callbacks.Callback):
    """Prunes a wrapped model at epoch boundaries and rewinds the survivors.

    At the end of every `every`-th epoch after the first `start` epochs, the
    callback runs one pruning round: `criterion` computes new masks from the
    trained weights, then the surviving weights are reset

    - to their initial values θ0 with `rewind="init"` (the lottery ticket of
      Frankle & Carbin 2019),
    - to their values after `k` epochs with `rewind=k` (late rewinding, Frankle et
      al. 2019), or
    - not at all with `rewind=None` (Han et al. 2015: prune, then keep training).

    With `reset_optimizer=True` the optimizer's slots and iteration count go back
    to zero, so each round trains like a fresh run with the same learning-rate
    schedule. Pruning stops after `rounds` rounds or once the overall sparsity
    reaches `target_sparsity`. To train the last ticket too, fit for
    `(rounds + 1) * every` epochs.

    Every epoch the callback adds to `logs` (and so to History, CSVLogger and
    TensorBoard) the sparsity the epoch trained with: `"sparsity"` overall,
    `"sparsity/<layer>"` per layer, and `"threshold/<layer>/<weight>"` for the
    threshold of the latest round (NaN before the first).

    Nothing is kept in the callback between epochs: the round count, the rewind
    point and the thresholds live in the wrappers' variables, so a model saved
    with `model.save()` and loaded again continues where it stopped when fit
    again with `initial_epoch` (or under `keras.callbacks.BackupAndRestore`).

    Args:
        criterion: A `tf_lottery` criterion: `PruneFraction`, `StdThreshold`,
            `RandomPrune` or your own subclass of `Criterion`.
        every: Prune at the end of every `every`-th epoch. Defaults to `1`.
        start: Number of epochs to train before the schedule begins. The first
            round runs after `start + every` epochs. Defaults to `0`.
        rounds: Maximum number of pruning rounds, or `None` for no limit.
            Defaults to `None`.
        target_sparsity: Stop pruning once this overall fraction of prunable
            weights is pruned, in (0, 1); `None` for no target. A round may
            overshoot it. Defaults to `None`.
        rewind: `"init"`, an epoch count `k` (an int with
            `0 <= k < start + every`), or `None`. Defaults to `"init"`.
        reset_optimizer: Reset the optimizer after each round. Defaults to `True`.
        verbose: `1` prints one line per round, `0` is silent. Defaults to `1`.

    Example:

    ```python
    model = tf_lottery.wrap(model)
    model.compile(keras.optimizers.Adam(1.2e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    pruning = tf_lottery.IterativePruning(tf_lottery.PruneFraction(0.2), every=5,
                                          rounds=10)
    model.fit(x, y, epochs=55, batch_size=60, callbacks=[pruning])
    ```
    """

    def __init__(
        self,
        criterion,
        *,
        every=1,
        start=0,
        rounds=None,
        target_sparsity=None,
        rewind="init",
        reset_optimizer=True,
        verbose=1,
    ):
        super().__init__()
        if not isinstance(criterion, Criterion):
            raise ValueError(
                "Expected criterion to be a tf_lottery criterion such as "
                "tf_lottery.PruneFraction(0.2) or tf_lottery.StdThreshold(0.5). "
                f"Received: criterion={criterion!r}"
            )
        if not _is_int(every) or every < 1:
            raise ValueError(f"Expected every to be a positive integer. Received: every={every!r}")
        if not _is_int(start) or start < 0:
            raise ValueError(f"Expected start to be a non-negative integer. Received: start={start!r}")
        if rounds is not None and (not _is_int(rounds) or rounds < 1):
            raise ValueError(
                f"Expected rounds to be a positive integer or None. Received: rounds={rounds!r}"
            )
        if target_sparsity is not None and (
            isinstance(target_sparsity, bool)
            or not isinstance(target_sparsity, (int, float))
            or not 0 < target_sparsity < 1
        ):
            raise ValueError(
                "Expected target_sparsity to be a fraction strictly between 0 and 1, or "
                f"None. Received: target_sparsity={target_sparsity!r}"
            )
        if _is_int(rewind):
            if not 0 <= rewind < start + every:
                raise ValueError(
                    f"rewind={rewind} asks to rewind to the weights after epoch {rewind}, "
                    f"but the first pruning round runs after epoch {start + every}: the "
                    f"rewind point must come before it. Use 0 <= rewind < {start + every}, "
                    "or raise start or every."
                )
        elif rewind not in ("init", None):
            raise ValueError(
                "Expected rewind to be 'init', None, or an epoch count (int). "
                f"Received: rewind={rewind!r}"
            )
        if not isinstance(reset_optimizer, bool):
            raise ValueError(
                f"Expected reset_optimizer to be True or False. Received: reset_optimizer={reset_optimizer!r}"
            )
        if verbose not in (0, 1, True, False):
            raise ValueError(f"Expected verbose to be 0 or 1. Received: verbose={verbose!r}")
        self.criterion = criterion
        self.every = every
        self.start = start
        self.rounds = rounds
        self.target_sparsity = target_sparsity
        self.rewind = rewind
        self.reset_optimizer = reset_optimizer
        self.verbose = int(verbose)

    def on_train_begin(self, logs=None):
        self._wrappers = pruning.require_wrappers(self.model, "IterativePruning")
        pruning.check_criterion(self.criterion, self._wrappers)
        self._update_figures()

    def on_epoch_begin(self, epoch, logs=None):
        if _is_int(self.rewind) and epoch == self.rewind and self.rounds_done == 0:
            for wrapper in self._wrappers:
                wrapper.save_rewind_point(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self._figures)
        if self._should_prune(epoch):
            self._prune_round(epoch)

    @property
    def rounds_done(self):
        """Number of pruning rounds this model has been through."""
        return max(int(keras.ops.convert_to_numpy(w.pruning_round.value)) for w in self._wrappers)

    def _should_prune(self, epoch):
        trained = epoch + 1
        if trained <= self.start or (trained - self.start) % self.every:
            return False
        if self.rounds is not None and self.rounds_done >= self.rounds:
            return False
        if self.target_sparsity is not None and self._report.sparsity >= self.target_sparsity:
            return False
        return True

    def _prune_round(self, epoch):
        if _is_int(self.rewind):
            missing = [
                w.layer.name
                for w in self._wrappers
                if int(keras.ops.convert_to_numpy(w.rewind_epoch.value)) != self.rewind
            ]
            if missing:
                raise ValueError(
                    f"rewind={self.rewind}, but layers {missing} hold no rewind point from "
                    f"epoch {self.rewind}: this fit started after that epoch on a model that "
                    "never went through it. Start from epoch 0 or use rewind='init'."
                )
        pruning.prune(self.model, self.criterion)
        if self.rewind == "init":
            pruning.rewind(self.model, "initial")
        elif self.rewind is not None:
            pruning.rewind(self.model, "rewind_point")
        if self.reset_optimizer and self.model.optimizer is not None:
            pruning.reset_optimizer(self.model.optimizer)
        self._update_figures()
        if self.verbose:
            report = self._report
            layers = ", ".join(f"{r.layer} {1 - r.sparsity:.1%}" for r in report.layers)
            rewound = {"init": "rewound to θ0", None: "not rewound"}.get(
                self.rewind, f"rewound to epoch {self.rewind}"
            )
            print(
                f"Pruning round {self.rounds_done} after epoch {epoch + 1}: "
                f"{report.surviving:,} of {report.total:,} weights remain "
                f"({1 - report.sparsity:.2%}; {layers}); {rewound}."
            )

    def _update_figures(self):
        self._report = sparsity(self.model)
        figures = {"sparsity": self._report.sparsity}
        figures.update({f"sparsity/{r.layer}": r.sparsity for r in self._report.layers})
        for wrapper in self._wrappers:
            for masked in wrapper.masked_weights:
                threshold = float(keras.ops.convert_to_numpy(masked.threshold.value))
                figures[f"threshold/{wrapper.layer.name}/{masked.name}"] = threshold
        self._figures = figures
