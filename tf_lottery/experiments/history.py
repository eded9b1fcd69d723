"""The results of a lottery experiment: one row per round, arm and seed, and their summary.

`LotteryHistory` holds a `RoundResult` per finished training; with several seeds
`summary()` gives, per arm and round, the mean, standard deviation, minimum,
maximum and count across seeds, which the table, the files and `plot_history`
show (error bars from the minimum to the maximum, as in Frankle & Carbin's
figures, or ± one standard deviation).
"""

import dataclasses
import json

import numpy as np

from tf_lottery.experiments.paths import TICKET
from tf_lottery.files import save_figure
from tf_lottery.files import write_atomically
from tf_lottery.validators import check_choice

# The measurements summarized across seeds, in the order of the files' columns.
METRICS = (
    "remaining",
    "best_val_accuracy",
    "test_accuracy",
    "final_test_accuracy",
    "early_stop_epoch",
    "error_barrier",
    "seconds",
)
ERROR_BARS = ("range", "std")


@dataclasses.dataclass(frozen=True)
class RoundResult:
    """One round of one arm, with one seed.

    Attributes:
        arm: `"ticket"` or a control, e.g. `"reinit"` or `"snip"`.
        round: Round index; 0 is the dense network.
        remaining: Fraction of prunable weights remaining.
        best_val_accuracy: Best validation accuracy over the round's epochs.
        early_stop_epoch: Epoch (from 1) of minimum validation loss.
        test_accuracy: Test accuracy at the early-stop epoch, or `None` without
            test data.
        final_test_accuracy: Test accuracy after the last epoch, or `None`.
        seconds: Wall time of the round's training.
        seed: The run's seed. Defaults to `0`.
        error_barrier: With `instability_points`, the error barrier between this
            round's network and a copy trained from the same start on another
            data order (see `tf_lottery.experiments.instability`); otherwise `None`.
    """

    arm: str
    round: int
    remaining: float
    best_val_accuracy: float
    early_stop_epoch: int
    test_accuracy: float | None
    final_test_accuracy: float | None
    seconds: float
    seed: int = 0
    error_barrier: float | None = None


@dataclasses.dataclass(frozen=True)
class Statistic:
    """One measurement across seeds.

    Attributes:
        mean: The mean.
        std: The sample standard deviation (divided by count - 1), or `None`
            with fewer than two values.
        min: The smallest value.
        max: The largest value.
        count: How many seeds had a value.
    """

    mean: float
    std: float | None
    min: float
    max: float
    count: int

    @classmethod
    def of(cls, values):
        """The statistic of `values`, or `None` if there are none."""
        values = np.asarray([v for v in values if v is not None], dtype=np.float64)
        if not values.size:
            return None
        std = float(np.std(values, ddof=1)) if values.size > 1 else None
        return cls(float(values.mean()), std, float(values.min()), float(values.max()), values.size)


@dataclasses.dataclass(frozen=True)
class RoundSummary:
    """One round of one arm across seeds.

    Attributes:
        arm: The arm.
        round: The round.
        count: How many seeds finished this round.
        stats: A dict from each name in `METRICS` to its `Statistic` across
            those seeds, or `None` where no seed has a value (no test data, no
            instability analysis).
    """

    arm: str
    round: int
    count: int
    stats: dict

    def accuracy(self):
        """Test accuracy at early stop, or best validation accuracy without test data."""
        return self.stats["test_accuracy"] or self.stats["best_val_accuracy"]


class LotteryHistory:
    """The results of `find_winning_ticket`: one `RoundResult` per round, arm and seed.

    Prints as a table (with several seeds: mean ± standard deviation and the
    count of seeds); `to_json`/`to_csv` save it, `LotteryHistory.from_json`
    reads it back, `summary()` aggregates across seeds, and `plot_history`
    draws it.

    Args:
        rows: `RoundResult`s. Defaults to none.
    """

    def __init__(self, rows=()):
        self.rows = list(rows)

    @property
    def arms(self):
        """The arms in the order they first appear."""
        return list(dict.fromkeys(row.arm for row in self.rows))

    @property
    def seeds(self):
        """The seeds in the order they first appear."""
        return list(dict.fromkeys(row.seed for row in self.rows))

    def arm(self, name, seed=None):
        """The rows of one arm (of one seed, if given), by round and seed."""
        return sorted(
            (r for r in self.rows if r.arm == name and seed in (None, r.seed)),
            key=lambda r: (r.round, r.seed),
        )

    def summary(self):
        """One `RoundSummary` per arm and round, across seeds, ordered by round then arm."""
        groups = {}
        for row in self.rows:
            groups.setdefault((row.round, self.arms.index(row.arm)), []).append(row)
        return [
            RoundSummary(
                rows[0].arm,
                rows[0].round,
                len(rows),
                {m: Statistic.of(getattr(r, m) for r in rows) for m in METRICS},
            )
            for _, rows in sorted(groups.items())
        ]

    def __str__(self):
        if len(self.seeds) > 1:
            return self._summary_table()
        barrier = any(r.error_barrier is not None for r in self.rows)
        lines = [
            f"{'arm':<13} {'round':>5} {'remaining':>9} {'best val acc':>12} "
            f"{'test acc @ES':>12} {'ES epoch':>8} {'seconds':>8}"
            + (f" {'err barrier':>11}" if barrier else "")
        ]
        for row in sorted(self.rows, key=lambda r: (r.round, self.arms.index(r.arm))):
            test = "-" if row.test_accuracy is None else f"{row.test_accuracy:.2%}"
            line = (
                f"{row.arm:<13} {row.round:>5} {row.remaining:>9.1%} {row.best_val_accuracy:>12.2%} "
                f"{test:>12} {row.early_stop_epoch:>8} {row.seconds:>8.1f}"
            )
            if barrier:
                line += f" {_percent(row.error_barrier):>11}"
            lines.append(line)
        return "\n".join(lines)

    def _summary_table(self):
        summary = self.summary()
        barrier = any(s.stats["error_barrier"] for s in summary)
        columns = [("best_val_accuracy", "best val acc"), ("test_accuracy", "test acc @ES")]
        if barrier:
            columns.append(("error_barrier", "err barrier"))
        lines = [
            f"{'arm':<13} {'round':>5} {'seeds':>5} {'remaining':>9} "
            + " ".join(f"{title:>16}" for _, title in columns)
            + f" {'ES epoch':>11}"
        ]
        for s in summary:
            cells = " ".join(f"{_mean_std(s.stats[m], percent=True):>16}" for m, _ in columns)
            lines.append(
                f"{s.arm:<13} {s.round:>5} {s.count:>5} {s.stats['remaining'].mean:>9.1%} "
                f"{cells} {_mean_std(s.stats['early_stop_epoch']):>11}"
            )
        return "\n".join(lines)

    __repr__ = __str__

    def to_dicts(self):
        """The rows as a list of dicts."""
        return [dataclasses.asdict(row) for row in self.rows]

    def summary_dicts(self):
        """The summary as a list of dicts: arm, round, count, and per metric its
        `mean`, `std`, `min`, `max` and `count` (or `None`)."""
        return [
            {
                "arm": s.arm,
                "round": s.round,
                "count": s.count,
                **{m: None if v is None else dataclasses.asdict(v) for m, v in s.stats.items()},
            }
            for s in self.summary()
        ]

    def to_json(self, path):
        """Writes `{"rows": [...], "summary": [...]}` (see `to_dicts`, `summary_dicts`)."""
        content = {"rows": self.to_dicts(), "summary": self.summary_dicts()}
        write_atomically(path, json.dumps(content, indent=2))

    def to_csv(self, path, summary=False):
        """Writes the rows as CSV with a header.

        Args:
            path: The file to write (atomically).
            summary: Write the summary instead: one line per arm and round with
                `count` and, for each metric, `<metric>_mean`, `_std`, `_min`
                and `_max`. Defaults to `False`.
        """
        if summary:
            fields = ["arm", "round", "count"] + [
                f"{m}_{part}" for m in METRICS for part in ("mean", "std", "min", "max")
            ]
            records = [
                {
                    "arm": s.arm,
                    "round": s.round,
                    "count": s.count,
                    **{
                        f"{m}_{part}": None if v is None else getattr(v, part)
                        for m, v in s.stats.items()
                        for part in ("mean", "std", "min", "max")
                    },
                }
                for s in self.summary()
            ]
        else:
            fields = [f.name for f in dataclasses.fields(RoundResult)]
            records = self.to_dicts()
        lines = [",".join(fields)]
        for record in records:
            lines.append(",".join("" if record[f] is None else str(record[f]) for f in fields))
        write_atomically(path, "\n".join(lines) + "\n")

    @classmethod
    def from_json(cls, path):
        """Reads a file written by `to_json` (or the plain list of rows of earlier versions)."""
        with open(path) as file:
            content = json.load(file)
        rows = content["rows"] if isinstance(content, dict) else content
        return cls(RoundResult(**row) for row in rows)


def _percent(value):
    return "-" if value is None else f"{value:.2%}"


def _mean_std(statistic, percent=False):
    if statistic is None:
        return "-"
    scale, unit, digits = (100, "%", 2) if percent else (1, "", 1)
    text = f"{statistic.mean * scale:.{digits}f}"
    if statistic.std is not None:
        text += f" ± {statistic.std * scale:.{digits}f}"
    return text + unit


def plot_history(history, path, error_bars="range"):
    """Draws test accuracy and early-stop epoch against weights remaining.

    As in Frankle & Carbin's figures: log-scale x axis with 100% at the left, one
    line per arm. Uses best validation accuracy where there was no test data.
    With several seeds each point is the mean across seeds, with error bars from
    the minimum to the maximum (the paper's) or of ± one standard deviation. With
    `instability_points`, a third panel draws the error barrier.

    Args:
        history: A `LotteryHistory`.
        path: The PNG file to write (atomically).
        error_bars: `"range"` (minimum to maximum across seeds) or `"std"`.
            Defaults to `"range"`.

    Example:

    ```python
    tf_lottery.plot_history(history, "runs/lenet/lottery.png", error_bars="std")
    ```
    """
    check_choice(error_bars, "error_bars", ERROR_BARS)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    summary = history.summary()
    panels = [
        ("accuracy", "test accuracy at early stop (%)", 100),
        ("early_stop_epoch", "early-stop epoch (min. validation loss)", 1),
    ]
    if all(r.test_accuracy is None for r in history.rows):
        panels[0] = ("accuracy", "best validation accuracy (%)", 100)
    if any(s.stats["error_barrier"] for s in summary):
        panels.append(("error_barrier", "error barrier along the linear path (%)", 100))
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4))
    dense = [s for s in summary if s.arm == TICKET and s.round == 0]
    for arm in history.arms:
        # Every arm starts from the same dense network, round 0 of the ticket.
        points = [s for s in summary if s.arm == arm]
        points = points if arm == TICKET else dense + points
        remaining = [100 * s.stats["remaining"].mean for s in points]
        for axis, (metric, _, scale) in zip(axes, panels):
            stats = [s.accuracy() if metric == "accuracy" else s.stats[metric] for s in points]
            shown = [(x, v) for x, v in zip(remaining, stats) if v is not None]
            if not shown:
                continue
            xs, values = zip(*shown)
            mean = np.array([v.mean for v in values]) * scale
            if error_bars == "std":
                spread = np.array([0.0 if v.std is None else v.std for v in values]) * scale
                low = high = spread
            else:
                low = mean - np.array([v.min for v in values]) * scale
                high = np.array([v.max for v in values]) * scale - mean
            axis.errorbar(xs, mean, yerr=[low, high], marker="o", capsize=3, label=arm)
    seeds = len(history.seeds)
    for axis, (_, label, _) in zip(axes, panels):
        axis.set_ylabel(label)
        axis.set_xscale("log")
        lowest = min(100 * s.stats["remaining"].mean for s in summary)
        axis.set_xlim(110, lowest * 0.8)
        axis.xaxis.set_major_locator(ticker.FixedLocator([100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1]))
        axis.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        axis.xaxis.set_minor_formatter(ticker.NullFormatter())
        axis.set_xlabel("weights remaining (%)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    if seeds > 1:
        bars = "minimum to maximum" if error_bars == "range" else "± one standard deviation"
        figure.suptitle(f"mean of {seeds} seeds; error bars: {bars}", fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)
