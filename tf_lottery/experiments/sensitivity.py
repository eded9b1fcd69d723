"""Sensitivity analysis: how much each layer alone can be pruned (Han et al. Fig. 5).

Each wrapped layer is pruned alone, one shot and without retraining, at each
level, and the model is evaluated; then the layer is put back exactly. The
report turns into per-layer settings: the largest level each layer tolerates
within a given drop of the metric.
"""

import dataclasses
import json
import warnings

import keras
import numpy as np

from tf_lottery import pruning
from tf_lottery.fraction import PruneFraction
from tf_lottery.criteria import StdThreshold
from tf_lottery.experiments.evaluation import evaluate_metric
from tf_lottery.files import save_figure
from tf_lottery.files import write_atomically
from tf_lottery.report import count_nonzero
from tf_lottery.validators import check_choice
from tf_lottery.validators import check_fraction
from tf_lottery.validators import check_int
from tf_lottery.validators import check_number

DEFAULT_SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclasses.dataclass
class SensitivityReport:
    """The metric of the model with one layer pruned, per layer and level.

    Attributes:
        kind: `"sparsity"` (levels are target sparsities) or `"quality"` (levels
            are StdThreshold qualities s).
        levels: The levels tried, in order.
        metric: The metric's name, e.g. `"accuracy"`.
        mode: `"max"` if higher is better, `"min"` if lower is.
        baseline: The metric before any of this pruning.
        results: Dict from layer name to the metric at each level.
        sparsities: Dict from layer name to the layer's sparsity at each level.
    """

    kind: str
    levels: tuple
    metric: str
    mode: str
    baseline: float
    results: dict
    sparsities: dict

    def drop(self, value):
        """How far `value` is below (mode max) or above (mode min) the baseline."""
        return self.baseline - value if self.mode == "max" else value - self.baseline

    def settings(self, max_drop):
        """Per layer, the largest level whose drop is at most `max_drop`.

        Feed the result to `StdThreshold(per_layer=...)` for qualities, or to
        `IterativePruning(layer_targets=...)` for sparsities. A layer that drops
        too much at every level gets `0.0`.

        Args:
            max_drop: The allowed drop, in the metric's units (0.005 = half a
                point of accuracy).
        """
        check_number(max_drop, "max_drop")
        chosen = {}
        for layer, values in self.results.items():
            # Levels are in increasing order: take the last before the first failure.
            best = 0.0
            for level, value in zip(self.levels, values):
                if self.drop(value) > max_drop:
                    break
                best = level
            chosen[layer] = best
        return chosen

    def fraction_rates(self, max_drop, rounds):
        """Per-layer `PruneFraction` rates that reach `settings(max_drop)` in `rounds` rounds.

        A layer that tolerates sparsity s gets rate 1 - (1 - s)^(1/rounds), so
        `rounds` rounds of `PruneFraction(per_layer=...)` bring it to s.
        """
        if self.kind != "sparsity":
            raise ValueError(
                "fraction_rates needs a report made with sparsities=..., not qualities."
            )
        check_int(rounds, "rounds", minimum=1)
        rates = {}
        for layer, target in self.settings(max_drop).items():
            rate = 1.0 - (1.0 - target) ** (1.0 / rounds)
            rates[layer] = min(max(rate, 1e-6), 1 - 1e-6)
        return rates

    def __str__(self):
        width = max([len(layer) for layer in self.results] + [5])
        label = "s" if self.kind == "quality" else "sparsity"
        head = f"{'layer':<{width}}  " + "  ".join(f"{label} {level:<5g}" for level in self.levels)
        lines = [f"{self.metric} with one layer pruned (baseline {self.baseline:.4g})", head]
        for layer, values in self.results.items():
            cells = "  ".join(f"{value:>{len(label) + 6}.4f}" for value in values)
            lines.append(f"{layer:<{width}}  {cells}")
        return "\n".join(lines)

    __repr__ = __str__

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self, path):
        """Writes the report as JSON."""
        write_atomically(path, json.dumps(self.to_dict(), indent=2))

    def to_csv(self, path):
        """Writes one row per layer and level: layer, level, sparsity, metric."""
        lines = [f"layer,{self.kind},sparsity,{self.metric}"]
        for layer, values in self.results.items():
            for level, sparsity, value in zip(self.levels, self.sparsities[layer], values):
                lines.append(f"{layer},{level},{sparsity},{value}")
        write_atomically(path, "\n".join(lines) + "\n")

    def plot(self, path):
        """A PNG with one line per layer: metric against level, as Han et al.'s Fig. 5."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(7, 4.5))
        for layer, values in self.results.items():
            x = self.sparsities[layer] if self.kind == "sparsity" else self.levels
            axis.plot(
                [100 * v for v in x] if self.kind == "sparsity" else x,
                values,
                marker="o",
                label=layer,
            )
        axis.axhline(self.baseline, color="gray", linestyle="--", label="baseline")
        axis.set_xlabel(
            "layer sparsity (%)" if self.kind == "sparsity" else "quality s (threshold = s·std)"
        )
        axis.set_ylabel(self.metric)
        axis.set_title("Sensitivity: each layer pruned alone, no retraining")
        axis.grid(True, alpha=0.3)
        axis.legend()
        figure.tight_layout()
        save_figure(figure, path)


def _sparsity_of(masks):
    total = sum(int(np.prod(m.shape)) for m in masks)
    return 1 - sum(count_nonzero(m) for m in masks) / total


def _assign_all(variables, values):
    for variable, value in zip(variables, values):
        variable.assign(value)


def sensitivity(
    model, data, *, sparsities=None, qualities=None, metric="accuracy", mode="max", verbose=1
):
    """Prunes each wrapped layer alone at each level and records the metric.

    One shot and without retraining, as Han et al.'s Figure 5 and Distiller's
    sensitivity analysis. After each level the layer's masks, weights and
    thresholds are put back, so the model ends bit-identical to how it started.

    Args:
        model: A compiled Keras model with `PruneWrapper` layers.
        data: `(x, y)` arrays or a dataset to evaluate on (a validation set).
        sparsities: Target sparsities of the layer, in (0, 1), pruned by
            magnitude (`PruneFraction`). Defaults to 0.1, 0.2, ..., 0.9 unless
            `qualities` is given.
        qualities: StdThreshold qualities s to try instead. Defaults to `None`.
        metric: Name of the metric in `model.evaluate`'s results. Defaults to
            `"accuracy"`.
        mode: `"max"` if higher is better, `"min"` if lower is. Defaults to
            `"max"`.
        verbose: `1` prints one line per layer. Defaults to `1`.

    Returns:
        A `SensitivityReport`.

    Example:

    ```python
    report = tf_lottery.sensitivity(model, (x_val, y_val), qualities=(0.25, 0.5, 1, 1.5, 2))
    print(report)
    criterion = tf_lottery.StdThreshold(per_layer=report.settings(max_drop=0.005))
    ```
    """
    wrappers = pruning.require_wrappers(model, "tf_lottery.sensitivity()")
    if sparsities is not None and qualities is not None:
        raise ValueError("Pass sparsities or qualities, not both.")
    check_choice(mode, "mode", ("max", "min"))
    if not model.compiled:
        raise ValueError(
            "sensitivity() evaluates the model: compile it first, with the metric you want."
        )
    kind = "quality" if qualities is not None else "sparsity"
    levels = tuple(qualities if qualities is not None else (sparsities or DEFAULT_SPARSITIES))
    for index, level in enumerate(levels):
        if kind == "quality":
            check_number(level, f"qualities[{index}]")
        else:
            check_fraction(level, f"sparsities[{index}]")
    levels = tuple(sorted(float(v) for v in levels))
    baseline = evaluate_metric(model, data, metric)
    results, sparsities_reached = {}, {}
    for wrapper in wrappers:
        name = wrapper.target_name
        saved = [keras.ops.convert_to_numpy(v.value) for v in wrapper.weights]
        masks = [m.mask for m in wrapper.masked_weights]
        # The layer is restored after every level, so it starts each at this sparsity.
        current = _sparsity_of(masks)
        results[name], sparsities_reached[name] = [], []
        with warnings.catch_warnings():
            # High levels may empty a layer: that is what is being measured.
            warnings.filterwarnings("ignore", message=".*would prune every surviving weight")
            try:
                for level in levels:
                    if kind == "quality":
                        pruning.prune(model, StdThreshold(level), layers=[name])
                    elif level > current:
                        rate = min(1 - (1 - level) / (1 - current), 1 - 1e-9)
                        pruning.prune(model, PruneFraction(rate, output_rate=rate), layers=[name])
                    sparsities_reached[name].append(_sparsity_of(masks))
                    results[name].append(evaluate_metric(model, data, metric))
                    _assign_all(wrapper.weights, saved)
            finally:
                _assign_all(wrapper.weights, saved)
        if verbose:
            cells = ", ".join(
                f"{level:g}: {value:.4f}" for level, value in zip(levels, results[name])
            )
            print(f"Sensitivity of {name}: {cells} (baseline {baseline:.4f})", flush=True)
    return SensitivityReport(kind, levels, metric, mode, baseline, results, sparsities_reached)
