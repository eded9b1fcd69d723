"""`IterativePruning`: the Keras callback that prunes and rewinds at epoch ends."""

import functools
import json
import warnings
import zlib

import keras
import numpy as np

from tf_lottery import batched
from tf_lottery import pruning
from tf_lottery.callbacks import freezing
from tf_lottery.callbacks.drop_rule import DropRule
from tf_lottery.callbacks.sparsity_logs import SparsityLogs
from tf_lottery.criteria import check_criterion
from tf_lottery.schedules import EveryEpochs
from tf_lottery.structured.target import check_target
from tf_lottery.structured.target import estimate
from tf_lottery.structured.target import prune_toward
from tf_lottery.validators import check_bool
from tf_lottery.validators import check_choice
from tf_lottery.validators import check_fraction
from tf_lottery.validators import check_int
from tf_lottery.validators import check_per_layer
from tf_lottery.validators import is_int

# Modules whose classes moved, by their new name: a criterion's stage key names the
# module it was defined in, and stages saved before the move keep their keys.
_MOVED_MODULES = {
    "tf_lottery.structured.units": "tf_lottery.structured",
    "tf_lottery.fraction": "tf_lottery.criteria",
}


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

    A rewind resets the whole model as `tf_lottery.rewind` defines it: every
    wrapped layer's weights, trainable or not (BatchNormalization statistics
    included, through the `RewindWrapper`s that `wrap` adds), except frozen
    layers.

    With `reset_optimizer=True` the optimizer's slots and iteration count go back
    to zero, so each round trains like a fresh run with the same learning-rate
    schedule. Pruning stops after `rounds` rounds, once the overall sparsity
    reaches `target_sparsity`, or once the model meets `target` (a
    `tf_lottery.Target`: MACs, parameters or latency after `shrink`; the round
    that would pass it prunes just enough units to meet it). To train the last ticket too, fit for
    `(rounds + 1) * every` epochs: a round that rewinds on the last epoch leaves
    `fit` returning the untrained ticket, and the callback warns when it does.

    Han et al.'s stopping rules: `layer_targets` gives layers their own target
    sparsity (a layer that reaches it stops pruning while the others go on;
    `tf_lottery.erk_targets` gives ERK targets), and `max_drop` stops pruning
    when the monitored metric of a round's trained network falls more than
    `max_drop` below the dense baseline (the metric at the first round boundary
    of this fit); with `restore_best=True` the masks and weights go back to the
    last round within the budget. `frozen` layers keep their weights exactly
    while the others train and prune, as Han et al. held the convolutions fixed
    while pruning the fully-connected layers; nothing of the freeze outlasts the
    fit, even one that ends in an exception.

    The callback is made of parts that each do one thing: `schedule` (an
    `EveryEpochs`) says when a round runs, `drop_rule` (a `DropRule`) is the
    `max_drop` rule, and `tf_lottery.callbacks.freezing` holds frozen layers.
    For pruning on a step schedule (Zhu & Gupta, tfmot), use `GradualPruning`.

    Every epoch the callback adds `"sparsity"` to `logs` (and so to the progress
    bar, History, CSVLogger and TensorBoard): the fraction of prunable weights the
    model has at the end of the epoch, after any round run there. With
    `log_layers=True` it adds `"sparsity/<layer>"` per layer and
    `"threshold/<layer>/<weight>"` for the threshold of the latest round (NaN
    before the first) too; the per-layer table is also one call away,
    `tf_lottery.sparsity(model)`.

    Nothing is kept in the callback between epochs: the round count, the rewind
    point and the thresholds live in the wrappers' variables, so a model saved
    with `model.save()` and loaded again continues where it stopped when fit
    again with `initial_epoch` (or under `keras.callbacks.BackupAndRestore`).

    Pruning in stages (unstructured, then Han et al., then whole units) is one
    `fit` per stage, each with its own callback. `rounds` counts the rounds of
    the stage, not those the model had before it. A fit is a new stage when it
    starts at epoch 0, or when its criterion or schedule differs from the
    stage the model was in; a fit that starts later (`initial_epoch`) with the
    same criterion and schedule resumes that stage, its rounds counted from the
    stage's start. Each fit begins on its first epoch, after every callback's
    `on_train_begin` (so after `BackupAndRestore` has restored the model).

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
        target: A `tf_lottery.Target` with a unit criterion (`UnitNorm`, ...):
            each round prunes the criterion's rate until the next round would
            pass the target, that round prunes as few units as meet it, and
            pruning stops; one line reports the figure reached. Defaults to
            `None`.
        layer_targets: Optional dict from layer name to its target sparsity in
            [0, 1) (0 keeps a layer dense). Defaults to `None`.
        max_drop: Largest allowed drop of `monitor` below the dense baseline, a
            non-negative number in the metric's units (0.005 = half a point of
            accuracy), or `None` for no drop rule. Defaults to `None`.
        monitor: The `logs` key the drop rule watches. Defaults to
            `"val_accuracy"`.
        mode: `"max"` if higher `monitor` is better, `"min"` if lower is (a
            loss). Defaults to `"max"`.
        restore_best: When the drop rule fires, restore the masks and weights
            of the last round within the budget. Defaults to `True`.
        frozen: Layer names or shell-style patterns (`"conv*"`) of layers whose
            weights stay fixed during this fit; they are neither pruned nor
            rewound. Defaults to `()`.
        rewind: `"init"`, an epoch count `k` (an int with
            `0 <= k < start + every`), or `None`. Defaults to `"init"`.
        reset_optimizer: Reset the optimizer after each round. Defaults to `True`.
        log_layers: Add per-layer sparsity and thresholds to `logs`. Keras'
            progress bar prints every key, so this makes long lines. Defaults
            to `False`.
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
        target=None,
        layer_targets=None,
        max_drop=None,
        monitor="val_accuracy",
        mode="max",
        restore_best=True,
        frozen=(),
        rewind="init",
        reset_optimizer=True,
        log_layers=False,
        verbose=1,
    ):
        super().__init__()
        self.criterion = check_criterion(criterion)
        self.schedule = EveryEpochs(every, start)
        self.rounds = check_int(rounds, "rounds", minimum=1, allow_none=True)
        self.target_sparsity = check_fraction(
            target_sparsity, "target_sparsity", allow_none=True, meaning="overall sparsity"
        )
        self.target = None if target is None else check_target(target, self.criterion)
        self.layer_targets = check_per_layer(
            layer_targets, "layer_targets", functools.partial(check_fraction, allow_zero=True)
        )
        self.drop_rule = DropRule(max_drop, monitor, mode, restore_best)
        self.frozen = freezing.check_patterns(frozen)
        if is_int(rewind):
            if not 0 <= rewind < self.schedule.first:
                raise ValueError(
                    f"rewind={rewind} asks to rewind to the weights after epoch {rewind}, "
                    f"but the first pruning round runs after epoch {self.schedule.first}: the "
                    f"rewind point must come before it. Use 0 <= rewind < {self.schedule.first}, "
                    "or raise start or every."
                )
        elif rewind not in ("init", None):
            raise ValueError(
                "Expected rewind to be 'init', None, or an epoch count (int). "
                f"Received: rewind={rewind!r}"
            )
        self.rewind = rewind
        self.reset_optimizer = check_bool(reset_optimizer, "reset_optimizer")
        self.log_layers = check_bool(log_layers, "log_layers")
        self.verbose = int(check_choice(verbose, "verbose", (0, 1)))

    def on_train_begin(self, logs=None):
        self._wrappers = pruning.require_wrappers(self.model, "IterativePruning")
        pruning.check_criterion(self.criterion, self._wrappers)
        pruning.check_layer_names("layer_targets", self.layer_targets, self._wrappers)
        frozen = freezing.match_layers(self.model, self.frozen)
        # Wrapped layers that train, prune and rewind: all but the frozen ones.
        self._movable = [w.target_name for w in self._wrappers if w not in frozen]
        # Every wrapper a rewind resets (BatchNormalization too), frozen ones aside.
        self._rewound = [w for w in pruning.rewindable(self.model) if w not in frozen]
        if self.rewind is not None:
            # Before training: a model wrapped without the copy fails now, not at round 1.
            epochs = pruning.rewind_epochs(self.model, self._rewound)
            try:
                for wrapper in self._rewound:
                    to = "initial" if self.rewind == "init" else None
                    wrapper.check_rewind(to, rewind_epoch=epochs.get(wrapper, -1))
            except ValueError as error:
                raise ValueError(f"IterativePruning(rewind={self.rewind!r}): {error}") from None
        self.drop_rule.reset()
        self._reached = set()
        self._logs = SparsityLogs(self.model, self._wrappers, self.log_layers)
        self._first_epoch = None
        self._rounds_before = None
        self._last_epoch = None
        self._rewound_after = None
        freezing.freeze(self.model, frozen)

    def on_train_end(self, logs=None):
        freezing.release(self.model)
        if self._last_epoch is not None and self._rewound_after == self._last_epoch:
            to = "θ0" if self.rewind == "init" else f"its weights after epoch {self.rewind}"
            warnings.warn(
                f"IterativePruning ran round {self.stage_rounds} at the end of the last epoch "
                f"({self._last_epoch + 1}) and rewound the model to {to}: the model that fit "
                "returns is the pruned, untrained ticket, not the network whose metrics were "
                f"logged. Fit {self.every} more epoch{'s' * (self.every > 1)} to train it (fit again with "
                f"initial_epoch={self._last_epoch + 1}), or fit (rounds + 1) * every epochs.",
                stacklevel=2,
            )

    def on_epoch_begin(self, epoch, logs=None):
        self._begin_stage(epoch)
        if is_int(self.rewind) and epoch == self.rewind and self.stage_rounds == 0:
            for wrapper in self._rewound:
                wrapper.save_rewind_point(epoch)

    def on_epoch_end(self, epoch, logs=None):
        self._begin_stage(epoch)
        self._last_epoch = epoch
        self.drop_rule.check_logs(logs or {})
        self._end_of_epoch(epoch, logs or {})
        if logs is not None:
            logs.update(self._logs.figures)

    # The arguments that live in the parts, readable under their own names.
    every = property(lambda self: self.schedule.every)
    start = property(lambda self: self.schedule.start)
    max_drop = property(lambda self: self.drop_rule.max_drop)
    monitor = property(lambda self: self.drop_rule.monitor)
    mode = property(lambda self: self.drop_rule.mode)
    restore_best = property(lambda self: self.drop_rule.restore_best)

    @property
    def rounds_done(self):
        """Number of pruning rounds this model has been through, in every stage."""
        counts = batched.read(self.model, "rounds", [w.pruning_round for w in self._wrappers])
        return max(int(count) for count in counts)

    @property
    def stage_rounds(self):
        """Number of pruning rounds of this stage: the ones `rounds` counts."""
        return self.rounds_done - (self._rounds_before or 0)

    def _stage_key(self):
        """A nonzero int32 naming the criterion and schedule, to tell a resume from a new stage."""
        criterion = type(self.criterion)
        # The unit criteria's module before the packages of issue 18, so that a
        # stage saved before keeps its key.
        module = _MOVED_MODULES.get(criterion.__module__, criterion.__module__)
        parts = [
            f"{module}.{criterion.__qualname__}",
            self.criterion.get_config(),
            self.schedule.get_config(),
            self.rewind,
        ]
        if self.target is not None:  # left out otherwise: stages saved before keep their key
            parts.append(self.target.get_config())
        settings = json.dumps(parts, sort_keys=True, default=repr)
        return zlib.crc32(settings.encode()) % (2**31 - 1) + 1

    def _begin_stage(self, epoch):
        """On the fit's first epoch: resumes the model's stage, or starts a new one.

        A subclassed model builds its wrappers in its first call: then the stage
        begins at the end of the first epoch, as the fit's first epoch decides.
        """
        if self._first_epoch is None:
            self._first_epoch = epoch
        if self._rounds_before is not None or not all(w.built for w in self._wrappers):
            return
        epoch = self._first_epoch
        key = self._stage_key()
        stored_key, stored_before = (
            int(v) for v in batched.read(self.model, "stage", [self._wrappers[0].pruning_stage])[0]
        )
        # A stage from before stages were recorded (key 0) resumes with absolute rounds.
        resumes = epoch > 0 and stored_key in (key, 0)
        self._rounds_before = stored_before if resumes else self.rounds_done
        stages = [w.pruning_stage for w in self._wrappers]
        batched.run(
            self.model,
            "stage",
            [],
            stages,
            lambda _, inputs: [keras.ops.copy(inputs[0]) for _ in stages],
            (np.array([key, self._rounds_before], "int32"),),
        )
        if self.verbose and self.rounds is not None and self.stage_rounds >= self.rounds:
            print(
                f"IterativePruning resumes at epoch {epoch + 1} a stage whose {self.rounds} "
                "rounds are done: it prunes no more in this fit."
            )
        reached = self._logs.report.sparsity
        if not resumes and self.target_sparsity is not None and reached >= self.target_sparsity:
            warnings.warn(
                f"IterativePruning will prune nothing: the model is already {reached:.2%} "
                f"sparse, at or past target_sparsity={self.target_sparsity}. Raise "
                "target_sparsity, or leave it out to prune for `rounds` rounds.",
                stacklevel=2,
            )

    def _end_of_epoch(self, epoch, logs):
        due, _ = self.schedule(epoch + 1)
        if not due or self.drop_rule.stopped:
            return
        rounds = self.stage_rounds  # read once: a read of the wrappers' counters
        state = f"round {rounds} ({self._logs.report.sparsity:.2%} sparse)"
        if not self.drop_rule.allows(self.model, epoch, logs, state):
            if self.drop_rule.restore_best:
                self._reset_optimizer()
                self._logs.update()
            if self.verbose:
                print(self.drop_rule.stopped + ".")
            return
        if self._should_prune(rounds):
            self._prune_round(epoch)

    def _layers_to_prune(self):
        names = []
        for name in self._movable:
            target = self.layer_targets.get(name)
            reached = self._logs.report[name].sparsity
            if target is not None and reached >= target:
                if name not in self._reached and self.verbose:
                    print(
                        f"Layer {name} reached its target sparsity {target:.1%} "
                        f"({reached:.2%}): it stops pruning."
                    )
                self._reached.add(name)
                continue
            names.append(name)
        return names

    def _should_prune(self, rounds):
        if self.rounds is not None and rounds >= self.rounds:
            return False
        if self.target_sparsity is not None and self._logs.report.sparsity >= self.target_sparsity:
            return False
        if self.target is not None and self._target_met():
            return False
        return bool(self._layers_to_prune())

    def _target_met(self):
        report = estimate(self.model, self.criterion, self.target, layers=self._movable)
        return report.meets

    def _reset_optimizer(self):
        if self.reset_optimizer and self.model.optimizer is not None:
            pruning.reset_optimizer(self.model.optimizer)

    def _prune_round(self, epoch):
        if is_int(self.rewind):
            epochs = pruning.rewind_epochs(self.model, self._rewound)
            missing = [w.target_name for w in self._rewound if epochs.get(w) != self.rewind]
            if missing:
                raise ValueError(
                    f"rewind={self.rewind}, but layers {missing} hold no rewind point from "
                    f"epoch {self.rewind}: this fit started after that epoch on a model that "
                    "never went through it. Start from epoch 0 or use rewind='init'."
                )
        reached = None
        if self.target is None:
            pruning.prune(self.model, self.criterion, layers=self._layers_to_prune())
        else:
            reached = prune_toward(
                self.model, self.criterion, self.target, layers=self._layers_to_prune()
            )
        rewound = [w.target_name for w in self._rewound]
        if self.rewind == "init":
            pruning.rewind(self.model, "initial", layers=rewound)
        elif self.rewind is not None:
            pruning.rewind(self.model, "rewind_point", layers=rewound)
        if self.rewind is not None:
            self._rewound_after = epoch
        self._reset_optimizer()
        self._logs.update()
        if self.verbose:
            self._print_round(epoch)
            if reached is not None and reached.meets:
                print(f"IterativePruning reached its target after this round: {reached}")

    def _print_round(self, epoch):
        report = self._logs.report
        kept = [1 - r.sparsity for r in report.layers]
        spread = f"layers {min(kept):.1%}–{max(kept):.1%}" if len(kept) > 1 else f"{kept[0]:.1%}"
        rewound = {"init": "rewound to θ0", None: "not rewound"}.get(
            self.rewind, f"rewound to epoch {self.rewind}"
        )
        earlier = f" ({self.rounds_done} in all)" if self._rounds_before else ""
        print(
            f"Pruning round {self.stage_rounds}{earlier} after epoch {epoch + 1}: "
            f"{report.surviving:,} of {report.total:,} weights remain "
            f"({1 - report.sparsity:.2%}; {spread}); {rewound}."
        )
