"""Han et al.'s stopping rule: stop pruning when a metric falls too far."""

import keras

from tf_lottery.validators import check_bool
from tf_lottery.validators import check_choice
from tf_lottery.validators import check_number


class DropRule:
    """Stops pruning once a metric falls more than `max_drop` below its dense value.

    The pruning counterpart of `keras.callbacks.EarlyStopping`: at each round
    boundary the pruning callback asks `allows(...)`. The first boundary of the
    fit sets the baseline (the network before this fit's first round). While the
    monitored metric stays within `max_drop` of it, the rule keeps a copy of the
    model's weights (masks included); the first time it does not, the rule
    stops pruning for the rest of the fit and, with `restore_best`, puts the
    last copy within budget back.

    Args:
        max_drop: Largest allowed drop of `monitor` below the baseline, a
            non-negative number in the metric's units (0.005 = half a point of
            accuracy), or `None` for no rule. Defaults to `None`.
        monitor: The `logs` key to watch. Defaults to `"val_accuracy"`.
        mode: `"max"` if higher `monitor` is better, `"min"` if lower is.
            Defaults to `"max"`.
        restore_best: Put back the last state within budget when the rule
            fires. Defaults to `True`.
    """

    def __init__(self, max_drop=None, monitor="val_accuracy", mode="max", restore_best=True):
        if max_drop is not None:
            check_number(max_drop, "max_drop", meaning="0.005 is half a point of accuracy")
        self.max_drop = max_drop
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(
                "Expected monitor to be a logs key such as 'val_accuracy'. "
                f"Received: monitor={monitor!r}"
            )
        self.monitor = monitor
        self.mode = check_choice(mode, "mode", ("max", "min"))
        self.restore_best = check_bool(restore_best, "restore_best")
        self.reset()

    def reset(self):
        """Forgets the baseline and the kept state, for a new fit."""
        self.baseline = None
        self.stopped = None
        self._last_good = None

    def check_logs(self, logs):
        """Raises a ValueError if the rule is on and `logs` lack its monitor.

        Called at the end of every epoch, so that a missing `validation_data`
        is reported after the first epoch rather than at the first round.
        """
        if self.max_drop is not None and self.monitor not in logs:
            raise ValueError(
                f"monitor={self.monitor!r} is not in the epoch logs, which have: {sorted(logs)}. "
                "Pass validation_data to fit for 'val_' metrics, or choose one of these keys."
            )

    def allows(self, model, epoch, logs, state):
        """Whether pruning may go on after this boundary.

        Args:
            model: The model being pruned.
            epoch: The epoch that just ended (0-based).
            logs: That epoch's logs.
            state: How to name the current state in the message, e.g.
                `"round 2 (36.00% sparse)"`.

        Returns:
            `True` while within budget (or without a rule). `False` once the rule
            has fired, after restoring (with `restore_best`) the last state
            within budget; `stopped` then holds the reason.
        """
        if self.max_drop is None:
            return True
        if self.stopped:
            return False
        self.check_logs(logs)
        value = float(logs[self.monitor])
        if self.baseline is None:
            self.baseline = value
        drop = self.baseline - value if self.mode == "max" else value - self.baseline
        if drop <= self.max_drop:
            weights = [keras.ops.convert_to_numpy(v.value) for v in model.weights]
            self._last_good = (state, weights)
            return True
        self.stopped = (
            f"Pruning stopped after epoch {epoch + 1}: {self.monitor} {value:.4g} is "
            f"{drop:.4g} from the dense baseline {self.baseline:.4g}, more than "
            f"max_drop={self.max_drop}"
        )
        if self.restore_best:
            # The first boundary is always within budget, so a state is kept.
            state_then, weights = self._last_good
            for variable, value_then in zip(model.weights, weights):
                variable.assign(value_then)
            self.stopped += f"; restored {state_then}"
        return False
