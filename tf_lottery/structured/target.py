"""Prune to a target: "half the MACs", "at most N parameters", "twice as fast".

A `Target` says what the pruned model must reach, measured on the model as
`shrink` makes it. `tf_lottery.prune(model, UnitNorm(...), target=Target(...))`
ranks the surviving units of every prunable layer by their scores divided by
their layer's mean (as `scope="global"` does) and prunes the fewest of the
lowest-ranked that meet the target; `IterativePruning(..., target=...)` and
`find_winning_ticket(..., target=...)` prune their rate per round until the
next round would pass the target, prune the last round to it, and stop.

The figure to reach:

- `macs` and `params`: the shrunk model's multiply-accumulates and parameters,
  as `shrink_report` counts them, computed from shrink's plan without building
  the model (`ShrinkPlanner`): exact, so the tolerance defaults to 0.
- `latency` with a `table` (a `LatencyTable`, e.g. measured on the phone): the
  table's prediction for the shrunk layers; deterministic, tolerance 0.
- `latency` without a table: LiteRT on this machine, float32, one thread, batch
  1, the whole model timed against the dense one in alternating pairs
  (`LatencyMeter`) until the ratio is known within `precision` (2%). Timings
  still vary, so a model *meets* a latency target when its measured latency is
  at most the target × (1 + `tolerance`), 5% by default.

A fraction (`macs=0.5`) is of the dense model, the wrapped architecture with
every unit; an integer (`params=100_000`) is a count.
"""

import dataclasses
import os

import keras
import numpy as np

from tf_lottery import pruning
from tf_lottery.export.latency import LatencyMeter
from tf_lottery.export.latency import LatencyTable
from tf_lottery.structured.shrink import NothingToShrink
from tf_lottery.structured.shrink import ShrinkPlanner
from tf_lottery.structured.shrink import shrink
from tf_lottery.structured.shrink import shrink_report
from tf_lottery.transforms import strip
from tf_lottery.validators import check_fraction
from tf_lottery.validators import check_int
from tf_lottery.validators import is_int
from tf_lottery.validators import is_number
from tf_lottery.wrapper import find_wrappers

_KINDS = ("macs", "params", "latency")
_NAMES = {"macs": "MACs", "params": "parameters", "latency": "latency"}
_MEASURED_TOLERANCE = 0.05


class Target:
    """What a pruned model must reach: MACs, parameters or latency after `shrink`.

    Give exactly one of `macs`, `params` or `latency`. A float strictly between
    0 and 1 is a fraction of the dense model's figure (`macs=0.5`: half the
    MACs; `latency=0.5`: twice as fast); for `macs` and `params` an int is a
    count (`params=100_000`: at most that many). A model *meets* the target when
    its figure is at most the target × (1 + `tolerance`).

    Args:
        macs: Multiply-accumulates of one example. Defaults to `None`.
        params: Parameters. Defaults to `None`.
        latency: Latency, a fraction of the dense model's. Defaults to `None`.
        table: For `latency`: a `LatencyTable`, or the path of a .json or .csv
            table, measured on the device that will run the model. Without one
            latency is measured in LiteRT on this machine (TensorFlow backend).
            Defaults to `None`.
        tolerance: How far above the target a figure may be and still meet it,
            a fraction in [0, 1). Defaults to `None`: 0 for counts and tables,
            0.05 for latency measured here (timing noise).
        threads: LiteRT threads for measured latency. Defaults to `1`.
        repeats: Timed repeats of the dense model's milliseconds (the median
            is taken). Defaults to `5`.
        invokes: Calls per timing. Defaults to `50`.
        precision: For measured latency: each candidate is timed against the
            dense model in alternating pairs until the 95% interval of their
            ratio is within this fraction of it (or 60 pairs are taken).
            Defaults to `0.02`.

    Example:

    ```python
    target = tf_lottery.Target(macs=0.5)
    tf_lottery.prune(model, tf_lottery.UnitNorm(round_to=8), target=target)
    print(tf_lottery.target_report(model, target))
    ```
    """

    def __init__(
        self,
        *,
        macs=None,
        params=None,
        latency=None,
        table=None,
        tolerance=None,
        threads=1,
        repeats=5,
        invokes=50,
        precision=0.02,
    ):
        given = {
            k: v
            for k, v in (("macs", macs), ("params", params), ("latency", latency))
            if v is not None
        }
        if len(given) != 1:
            raise ValueError(
                "Target takes exactly one of macs, params or latency, e.g. Target(macs=0.5) for "
                f"half the MACs. Received: {', '.join(f'{k}={v!r}' for k, v in given.items()) or 'none'}"
            )
        ((self.kind, value),) = given.items()
        self.value = _check_value(self.kind, value)
        if table is not None and self.kind != "latency":
            raise ValueError(
                f"table gives latencies; a {self.kind} target needs none. Pass latency=... with "
                f"it, or leave table out. Received: table={table!r}"
            )
        if isinstance(table, (str, os.PathLike)):
            table = LatencyTable.load(table)
        elif table is not None and not isinstance(table, LatencyTable):
            raise ValueError(
                "Expected table to be a tf_lottery.LatencyTable or the path of a .json or .csv "
                f"table. Received: table={table!r}"
            )
        self.table = table
        if tolerance is None:
            tolerance = _MEASURED_TOLERANCE if self.measured else 0.0
        self.tolerance = check_fraction(
            tolerance,
            "tolerance",
            allow_zero=True,
            meaning="how far above the target still meets it",
        )
        self.threads = check_int(threads, "threads", minimum=1)
        self.repeats = check_int(repeats, "repeats", minimum=1)
        self.invokes = check_int(invokes, "invokes", minimum=1)
        self.precision = check_fraction(
            precision, "precision", meaning="the latency ratio's relative precision, 0.02: 2%"
        )

    @property
    def measured(self):
        """Whether the figure is timed in LiteRT on this machine."""
        return self.kind == "latency" and self.table is None

    def goal(self, dense):
        """The figure to reach, given the dense model's."""
        return self.value * dense if isinstance(self.value, float) else self.value

    def meets(self, achieved, dense):
        """Whether `achieved` meets the target, within the tolerance."""
        return achieved <= self.goal(dense) * (1 + self.tolerance)

    def figure(self, report):
        """The figure of the shrunk model a `ShrinkReport` describes (not for measured latency)."""
        if self.kind == "macs":
            return report.macs_after
        if self.kind == "params":
            return report.params_after
        return self.table.predict(report)

    def meter(self, reference):
        """A `LatencyMeter` that times models against `reference`, the dense model."""
        return LatencyMeter(
            reference, threads=self.threads, invokes=self.invokes, precision=self.precision
        )

    def source(self):
        """Where the figure comes from, in words."""
        if self.kind != "latency":
            return "counted on the model as shrink() makes it"
        if self.table is not None:
            return f"predicted by the latency table ({self.table.device or 'no device named'})"
        return (
            f"LiteRT on this machine, float32, {self.threads} "
            f"thread{'s' if self.threads > 1 else ''}, batch 1, timed "
            "against the dense model in alternating pairs"
        )

    def get_config(self):
        config = {self.kind: self.value, "tolerance": self.tolerance}
        if self.table is not None:
            config["table"] = self.table.get_config()
        if self.measured:
            config.update(
                threads=self.threads,
                repeats=self.repeats,
                invokes=self.invokes,
                precision=self.precision,
            )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("table"), dict):
            config["table"] = LatencyTable(**config["table"])
        return cls(**config)

    def __repr__(self):
        extra = f", table={self.table!r}" if self.table is not None else ""
        return f"Target({self.kind}={self.value!r}{extra}, tolerance={self.tolerance})"


def _check_value(kind, value):
    if isinstance(value, float) or (is_number(value) and not is_int(value)):
        if 0 < value < 1:
            return float(value)
    elif is_int(value) and kind != "latency" and value >= 1:
        return int(value)
    if kind == "latency":
        expected = (
            "a fraction of the dense model's latency, strictly between 0 and 1 (0.5: twice as fast)"
        )
    else:
        expected = (
            f"a fraction of the dense model's {_NAMES[kind]}, strictly between 0 and 1 (0.5: "
            "half), or a count, an int >= 1"
        )
    raise ValueError(f"Expected {kind} to be {expected}. Received: {kind}={value!r}")


@dataclasses.dataclass(frozen=True)
class TargetReport:
    """The figure a pruned model reached, beside its target.

    Attributes:
        kind: `"macs"`, `"params"` or `"latency"`.
        goal: The figure to reach (MACs, parameters, or milliseconds).
        achieved: The figure of the model as `shrink` makes it.
        dense: The dense model's figure.
        tolerance: How far above `goal` still meets it.
        source: Where the figures come from.
        interval: For measured latency, the 95% interval of `achieved`, as
            `(low, high)` in milliseconds; `None` otherwise.
    """

    kind: str
    goal: float
    achieved: float
    dense: float
    tolerance: float
    source: str
    interval: tuple = None

    @property
    def meets(self):
        return self.achieved <= self.goal * (1 + self.tolerance)

    def __str__(self):
        def show(x):
            return f"{x:.3f} ms" if self.kind == "latency" else f"{int(x):,}"

        within = f" within {self.tolerance:.0%}" if self.tolerance else ""
        share = f"{self.achieved / self.dense:.1%} of the dense {show(self.dense)}"
        if self.interval is not None:
            low, high = (x / self.dense for x in self.interval)
            share += f", 95% interval {low:.1%}-{high:.1%}"
        return (
            f"{_NAMES[self.kind]}: {show(self.achieved)} ({share}) for a target of at most {show(self.goal)} "
            f"({self.goal / self.dense:.1%}): {'met' if self.meets else 'NOT met'}{within}; "
            f"{self.source}."
        )


def _require_target(target):
    if not isinstance(target, Target):
        raise ValueError(
            "Expected target to be a tf_lottery.Target, e.g. Target(macs=0.5). "
            f"Received: target={target!r}"
        )


def check_target(target, criterion):
    """`target`, checked, and checked to go with `criterion`; a ValueError says what is wrong."""
    _require_target(target)
    if not hasattr(criterion, "planner"):
        raise ValueError(
            "A target is met by removing whole units: pass a unit criterion (UnitNorm, "
            "BatchNormScale, UnitStdThreshold) with it. Received: "
            f"criterion={criterion!r}"
        )
    if getattr(criterion, "per_layer", None):
        raise ValueError(
            "per_layer rates and a target both say how many units go; with a target, units "
            "are ranked over all layers. Leave per_layer out, or prune without target. "
            f"Received: per_layer={criterion.per_layer!r}"
        )
    return target


class _Search:
    """The target's figure after pruning `drop` more units, for one model and criterion."""

    def __init__(self, model, criterion, targets, target):
        self.model, self.criterion, self.targets, self.target = model, criterion, targets, target
        self.plan = criterion.planner(targets, model)
        self.pool = sum(int(alive.sum()) for _, alive, _ in self.plan(0))
        self._cache = {}
        if target.measured:
            self.meter = target.meter(strip(model))
            self.dense = self.meter.ms(target.repeats)
        else:
            self.sizes = ShrinkPlanner(model)
            self.dense = target.figure(self.sizes.dense)
        self.goal = target.goal(self.dense)

    def figure(self, drop):
        plans = self.plan(drop)
        key = tuple(len(pruned) for _, _, pruned in plans)
        if key not in self._cache:
            self._cache[key] = self._measure(drop) if self.target.measured else self._count(plans)
        return self._cache[key]

    def _count(self, plans):
        removed = {
            group.name: np.union1d(np.flatnonzero(~alive), pruned) for group, alive, pruned in plans
        }
        return self.target.figure(self.sizes.report(removed))

    def _measure(self, drop):
        weights = [keras.ops.convert_to_numpy(w.value) for w in self.model.weights]
        try:
            self.write(drop)
            try:
                small = shrink(self.model)
            except NothingToShrink:
                small = strip(self.model)
            return self.meter.ratio(small) * self.dense
        finally:
            for variable, value in zip(self.model.weights, weights):
                variable.assign(value)

    def write(self, drop):
        masks, unit_masks = self.criterion.compute_unit_masks(self.targets, self.model, drop)
        wrappers = pruning.require_wrappers(self.model, "tf_lottery.prune()")
        layers = {t.layer for t in self.targets}
        pruning.write_masks(self.model, wrappers, layers, self.targets, masks, unit_masks)

    def needed(self):
        """The fewest units to drop that meet the goal; a ValueError if none does."""
        if self.figure(0) <= self.goal:
            return 0
        if self.figure(self.pool) > self.goal:
            self._unreachable()
        low, high = 0, self.pool  # low misses the goal, high meets it
        while high - low > 1:
            middle = (low + high) // 2
            if self.figure(middle) <= self.goal:
                high = middle
            else:
                low = middle
        return high

    def _unreachable(self):
        least = self.figure(self.pool)
        name = _NAMES[self.target.kind]
        raise ValueError(
            f"target {self.target!r} cannot be reached: with every prunable unit pruned (each "
            f"layer keeping at least one, or round_to={self.criterion.round_to}) the model "
            f"still has {least:,.6g} {name}, {least / self.dense:.1%} of the dense {self.dense:,.6g}, "
            f"against a target of {self.goal:,.6g}. The rest lies in layers whose units stay "
            "(inputs, outputs, groups left alone). Raise the target."
        )


def target_masks(model, criterion, targets, target, sparsity=None):
    """The masks and unit masks that meet `target`, computed without changing `model`.

    `tf_lottery.prune(model, criterion, target=target)` calls it.
    """
    check_target(target, criterion)
    if sparsity is not None:
        raise ValueError(
            "sparsity and target both say how much to prune; pass one. Received: "
            f"sparsity={sparsity!r}, target={target!r}"
        )
    search = _Search(model, criterion, targets, target)
    return criterion.compute_unit_masks(targets, model, search.needed())


def prune_toward(model, criterion, target, *, layers=None):
    """One round of `criterion`, or, where it would pass `target`, a round to the target.

    `IterativePruning` and `find_winning_ticket` call it each round: the rate
    of the criterion is pruned until the next round would go below the target,
    and that round prunes as few units as meet it.

    Returns:
        A `TargetReport` of the model after the round.
    """
    wrappers = pruning.require_wrappers(model, "tf_lottery.prune()")
    pruning.check_criterion(criterion, wrappers)
    check_target(target, criterion)
    targets = pruning.prune_targets(wrappers, layers)
    search = _Search(model, criterion, targets, target)
    drop = search.needed() if search.figure(None) <= search.goal else None
    search.write(drop)
    achieved = search.figure(drop)
    return TargetReport(
        target.kind, search.goal, achieved, search.dense, target.tolerance, target.source()
    )


def estimate(model, criterion, target, *, layers=None):
    """The `TargetReport` of `model` as it is now, from shrink's plan (or a measurement)."""
    wrappers = pruning.require_wrappers(model, "tf_lottery.prune()")
    search = _Search(model, criterion, pruning.prune_targets(wrappers, layers), target)
    return TargetReport(
        target.kind, search.goal, search.figure(0), search.dense, target.tolerance, target.source()
    )


def target_report(model, target):
    """The figure `model` reaches once shrunk, beside `target`.

    Shrinks the model (`tf_lottery.shrink`) and counts its MACs or parameters
    (`shrink_report`), predicts its latency from the target's table, or times it
    and the dense model in LiteRT on this machine.

    Args:
        model: A pruned, wrapped Sequential or Functional model.
        target: The `tf_lottery.Target`.

    Returns:
        A `TargetReport`; `print()` it, or read `.achieved`, `.goal`, `.meets`.

    Example:

    ```python
    tf_lottery.prune(model, tf_lottery.UnitNorm(), target=tf_lottery.Target(macs=0.5))
    print(tf_lottery.target_report(model, tf_lottery.Target(macs=0.5)))
    ```
    """
    _require_target(target)
    plain = strip(model) if find_wrappers(model) else model
    try:
        small = shrink(plain)
    except NothingToShrink:
        small = plain
    interval = None
    if target.measured:
        meter = target.meter(plain)
        dense = meter.ms(target.repeats)
        achieved = meter.ratio(small) * dense
        interval = (meter.last[1] * dense, meter.last[2] * dense)
    else:
        report = shrink_report(plain, small)
        dense = target.figure(dataclasses.replace(report, layers=tuple(_dense(report))))
        achieved = target.figure(report)
    return TargetReport(
        target.kind,
        target.goal(dense),
        achieved,
        dense,
        target.tolerance,
        target.source(),
        interval,
    )


def _dense(report):
    """The rows of `report` with the dense figures as the figures after."""
    for row in report.layers:
        yield dataclasses.replace(
            row,
            units_after=row.units_before,
            params_after=row.params_before,
            macs_after=row.macs_before,
        )
