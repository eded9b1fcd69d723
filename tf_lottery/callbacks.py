"""`IterativePruning`: the Keras callback that prunes and rewinds at epoch ends."""

import fnmatch

import keras

from tf_lottery import keras_private
from tf_lottery import pruning
from tf_lottery.criteria import Criterion
from tf_lottery.report import sparsity
from tf_lottery.wrapper import RewindWrapper
from tf_lottery.wrapper import find_rewind_wrappers
from tf_lottery.wrapper import read_threshold


def _name(layer):
    """A layer's name as users know it: the wrapped layer's for a wrapper."""
    return layer.layer.name if isinstance(layer, RewindWrapper) else layer.name


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_fraction(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1


class _Frozen(keras.constraints.Constraint):
    """A constraint that puts a weight back to a fixed value after every step."""

    def __init__(self, value):
        self.value = value

    def __call__(self, weight):
        return self.value


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
    schedule. Pruning stops after `rounds` rounds or once the overall sparsity
    reaches `target_sparsity`. To train the last ticket too, fit for
    `(rounds + 1) * every` epochs.

    Han et al.'s stopping rules: `layer_targets` gives layers their own target
    sparsity (a layer that reaches it stops pruning while the others go on), and
    `max_drop` stops pruning when the monitored metric of a round's trained
    network falls more than `max_drop` below the dense baseline (the metric at
    the first round boundary of this fit); with `restore_best=True` the masks
    and weights go back to the last round within the budget. `frozen` layers keep
    their weights exactly while the others train and prune, as Han et al. held
    the convolutions fixed while pruning the fully-connected layers.

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
        layer_targets: Optional dict from layer name to its target sparsity in
            (0, 1). Defaults to `None`.
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
        if not isinstance(criterion, Criterion):
            raise ValueError(
                "Expected criterion to be a tf_lottery criterion such as "
                "tf_lottery.PruneFraction(0.2) or tf_lottery.StdThreshold(0.5). "
                f"Received: criterion={criterion!r}"
            )
        if not _is_int(every) or every < 1:
            raise ValueError(f"Expected every to be a positive integer. Received: every={every!r}")
        if not _is_int(start) or start < 0:
            raise ValueError(
                f"Expected start to be a non-negative integer. Received: start={start!r}"
            )
        if rounds is not None and (not _is_int(rounds) or rounds < 1):
            raise ValueError(
                f"Expected rounds to be a positive integer or None. Received: rounds={rounds!r}"
            )
        if target_sparsity is not None and not _is_fraction(target_sparsity):
            raise ValueError(
                "Expected target_sparsity to be a fraction strictly between 0 and 1, or "
                f"None. Received: target_sparsity={target_sparsity!r}"
            )
        layer_targets = {} if layer_targets is None else layer_targets
        if not isinstance(layer_targets, dict) or not all(
            _is_fraction(v) for v in layer_targets.values()
        ):
            raise ValueError(
                "Expected layer_targets to be a dict from layer name to a target sparsity "
                f"strictly between 0 and 1. Received: layer_targets={layer_targets!r}"
            )
        if max_drop is not None and (
            isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or max_drop < 0
        ):
            raise ValueError(
                "Expected max_drop to be a non-negative number (e.g. 0.005 for half a point "
                f"of accuracy) or None. Received: max_drop={max_drop!r}"
            )
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(
                f"Expected monitor to be a logs key such as 'val_accuracy'. Received: monitor={monitor!r}"
            )
        if mode not in ("max", "min"):
            raise ValueError(f"Expected mode='max' or 'min'. Received: mode={mode!r}")
        if not isinstance(restore_best, bool):
            raise ValueError(
                f"Expected restore_best to be True or False. Received: restore_best={restore_best!r}"
            )
        frozen = (frozen,) if isinstance(frozen, str) else frozen
        if not isinstance(frozen, (list, tuple)) or not all(
            isinstance(p, str) and p for p in frozen
        ):
            raise ValueError(
                "Expected frozen to be a list of layer names or patterns such as 'conv*'. "
                f"Received: frozen={frozen!r}"
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
        if not isinstance(log_layers, bool):
            raise ValueError(
                f"Expected log_layers to be True or False. Received: log_layers={log_layers!r}"
            )
        if verbose not in (0, 1, True, False):
            raise ValueError(f"Expected verbose to be 0 or 1. Received: verbose={verbose!r}")
        self.criterion = criterion
        self.every = every
        self.start = start
        self.rounds = rounds
        self.target_sparsity = target_sparsity
        self.layer_targets = dict(layer_targets)
        self.max_drop = max_drop
        self.monitor = monitor
        self.mode = mode
        self.restore_best = restore_best
        self.frozen = tuple(frozen)
        self.rewind = rewind
        self.reset_optimizer = reset_optimizer
        self.log_layers = log_layers
        self.verbose = int(verbose)

    def on_train_begin(self, logs=None):
        self._wrappers = pruning.require_wrappers(self.model, "IterativePruning")
        pruning.check_criterion(self.criterion, self._wrappers)
        pruning.check_layer_names("layer_targets", self.layer_targets, self._wrappers)
        self._frozen_layers = self._match_frozen()
        frozen = {id(layer) for layer in self._frozen_layers}
        # Wrapped layers that train, prune and rewind: all but the frozen ones.
        self._movable = [w.layer.name for w in self._wrappers if id(w) not in frozen]
        # Every wrapper a rewind resets (BatchNormalization too), frozen ones aside.
        self._rewound = [w for w in pruning.rewindable(self.model) if id(w) not in frozen]
        self._baseline = None
        self._last_good = None
        self._stopped = None
        self._reached = set()
        self._update_figures()
        self._freeze()

    def on_train_end(self, logs=None):
        self._unfreeze()

    def on_epoch_begin(self, epoch, logs=None):
        if _is_int(self.rewind) and epoch == self.rewind and self.rounds_done == 0:
            for wrapper in self._rewound:
                wrapper.save_rewind_point(epoch)

    def on_epoch_end(self, epoch, logs=None):
        self._end_of_epoch(epoch, logs or {})
        if logs is not None:
            logs.update(self._figures)

    def _end_of_epoch(self, epoch, logs):
        trained = epoch + 1
        if trained <= self.start or (trained - self.start) % self.every or self._stopped:
            return
        if self.max_drop is not None and not self._within_budget(epoch, logs):
            return
        if self._should_prune():
            self._prune_round(epoch)

    @property
    def rounds_done(self):
        """Number of pruning rounds this model has been through."""
        return max(int(keras.ops.convert_to_numpy(w.pruning_round.value)) for w in self._wrappers)

    def _match_frozen(self):
        layers = keras_private.flatten_layers(self.model)
        inner = {id(w.layer) for w in find_rewind_wrappers(self.model)}
        candidates = [layer for layer in layers if id(layer) not in inner]
        matched = []
        for pattern in self.frozen:
            found = [c for c in candidates if fnmatch.fnmatchcase(_name(c), pattern)]
            if not found:
                raise ValueError(
                    f"frozen pattern {pattern!r} matches no layer of model '{self.model.name}'. "
                    f"Layers: {[_name(c) for c in candidates]}. Received: frozen={list(self.frozen)}"
                )
            matched.extend(f for f in found if f not in matched)
        return matched

    def _freeze(self):
        self._saved_constraints = []
        for layer in self._frozen_layers:
            inner = layer.layer if isinstance(layer, RewindWrapper) else layer
            for variable in inner.trainable_weights:
                self._saved_constraints.append((variable, variable.constraint))
                # A numpy copy: a tensor made from the variable would follow its updates.
                variable.constraint = _Frozen(keras.ops.convert_to_numpy(variable.value).copy())
        if self._saved_constraints:
            # The train step reads constraints when it is traced: trace it again.
            self.model.make_train_function(force=True)

    def _unfreeze(self):
        for variable, constraint in getattr(self, "_saved_constraints", []):
            variable.constraint = constraint
        if getattr(self, "_saved_constraints", None):
            self.model.make_train_function(force=True)
        self._saved_constraints = []

    def _layers_to_prune(self):
        names = []
        for name in self._movable:
            target = self.layer_targets.get(name)
            if target is not None and self._report[name].sparsity >= target:
                if name not in self._reached and self.verbose:
                    print(
                        f"Layer {name} reached its target sparsity {target:.1%} "
                        f"({self._report[name].sparsity:.2%}): it stops pruning."
                    )
                self._reached.add(name)
                continue
            names.append(name)
        return names

    def _should_prune(self):
        if self.rounds is not None and self.rounds_done >= self.rounds:
            return False
        if self.target_sparsity is not None and self._report.sparsity >= self.target_sparsity:
            return False
        return bool(self._layers_to_prune())

    def _within_budget(self, epoch, logs):
        if self.monitor not in logs:
            raise ValueError(
                f"monitor={self.monitor!r} is not in the epoch logs, which have: {sorted(logs)}. "
                "Pass validation_data to fit for 'val_' metrics, or choose one of these keys."
            )
        value = float(logs[self.monitor])
        if self._baseline is None:
            self._baseline = value
        drop = self._baseline - value if self.mode == "max" else value - self._baseline
        if drop <= self.max_drop:
            self._last_good = (
                self.rounds_done,
                self._report.sparsity,
                [keras.ops.convert_to_numpy(v.value) for v in self.model.weights],
            )
            return True
        message = (
            f"Pruning stopped after epoch {epoch + 1}: {self.monitor} {value:.4g} is "
            f"{drop:.4g} from the dense baseline {self._baseline:.4g}, more than "
            f"max_drop={self.max_drop}"
        )
        if self.restore_best and self._last_good is not None:
            round_done, sparsity_then, values = self._last_good
            for variable, value_then in zip(self.model.weights, values):
                variable.assign(value_then)
            if self.reset_optimizer and self.model.optimizer is not None:
                pruning.reset_optimizer(self.model.optimizer)
            self._update_figures()
            message += f"; restored round {round_done} ({sparsity_then:.2%} sparse)"
        self._stopped = message
        if self.verbose:
            print(message + ".")
        return False

    def _prune_round(self, epoch):
        if _is_int(self.rewind):
            missing = [
                w.layer.name
                for w in self._rewound
                if int(keras.ops.convert_to_numpy(w.rewind_epoch.value)) != self.rewind
            ]
            if missing:
                raise ValueError(
                    f"rewind={self.rewind}, but layers {missing} hold no rewind point from "
                    f"epoch {self.rewind}: this fit started after that epoch on a model that "
                    "never went through it. Start from epoch 0 or use rewind='init'."
                )
        pruning.prune(self.model, self.criterion, layers=self._layers_to_prune())
        rewound = [w.layer.name for w in self._rewound]
        if self.rewind == "init":
            pruning.rewind(self.model, "initial", layers=rewound)
        elif self.rewind is not None:
            pruning.rewind(self.model, "rewind_point", layers=rewound)
        if self.reset_optimizer and self.model.optimizer is not None:
            pruning.reset_optimizer(self.model.optimizer)
        self._update_figures()
        if self.verbose:
            report = self._report
            kept = [1 - r.sparsity for r in report.layers]
            spread = (
                f"layers {min(kept):.1%}–{max(kept):.1%}" if len(kept) > 1 else f"{kept[0]:.1%}"
            )
            rewound = {"init": "rewound to θ0", None: "not rewound"}.get(
                self.rewind, f"rewound to epoch {self.rewind}"
            )
            print(
                f"Pruning round {self.rounds_done} after epoch {epoch + 1}: "
                f"{report.surviving:,} of {report.total:,} weights remain "
                f"({1 - report.sparsity:.2%}; {spread}); {rewound}."
            )

    def _update_figures(self):
        self._report = sparsity(self.model)
        self._figures = {"sparsity": self._report.sparsity}
        if not self.log_layers:
            return
        figures = self._figures
        figures.update({f"sparsity/{r.layer}": r.sparsity for r in self._report.layers})
        for wrapper in self._wrappers:
            for masked in wrapper.masked_weights:
                threshold = read_threshold(masked.threshold)
                figures[f"threshold/{wrapper.layer.name}/{masked.name}"] = threshold
        self._figures = figures
