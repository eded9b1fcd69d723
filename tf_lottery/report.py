"""Sparsity tables: how many prunable weights each layer still has."""

import dataclasses

import keras
import numpy as np

from tf_lottery import batched
from tf_lottery import keras_private
from tf_lottery.registry import is_prunable
from tf_lottery.registry import prunable_weights
from tf_lottery.wrapper import PruneWrapper
from tf_lottery.wrapper import model_layers
from tf_lottery.wrapper import find_wrappers


@dataclasses.dataclass(frozen=True)
class LayerSparsity:
    """Counts of one layer's prunable weights.

    Attributes:
        layer: The layer name (the wrapped layer's own name for a wrapper).
        total: Number of prunable weights.
        surviving: Number not pruned (mask 1 in a wrapper, non-zero otherwise).
        wrapped: Whether the layer is in a `PruneWrapper`.
    """

    layer: str
    total: int
    surviving: int
    wrapped: bool

    @property
    def sparsity(self):
        """Fraction of the layer's prunable weights that are pruned."""
        return 1.0 - self.surviving / self.total if self.total else 0.0


@dataclasses.dataclass(frozen=True)
class SparsityReport:
    """Per-layer and overall sparsity of a model; prints as a table.

    Attributes:
        layers: One `LayerSparsity` per prunable layer, in model order.
    """

    layers: tuple

    @property
    def total(self):
        """Number of prunable weights in the model."""
        return sum(row.total for row in self.layers)

    @property
    def surviving(self):
        """Number of prunable weights not pruned."""
        return sum(row.surviving for row in self.layers)

    @property
    def sparsity(self):
        """Overall fraction of prunable weights that are pruned."""
        return 1.0 - self.surviving / self.total if self.total else 0.0

    def __getitem__(self, layer):
        for row in self.layers:
            if row.layer == layer:
                return row
        raise KeyError(
            f"No prunable layer named {layer!r}; layers: {[r.layer for r in self.layers]}"
        )

    def to_dict(self):
        """A JSON-ready dict: per-layer rows and the overall figures."""
        return {
            "layers": [{**dataclasses.asdict(r), "sparsity": r.sparsity} for r in self.layers],
            "total": self.total,
            "surviving": self.surviving,
            "sparsity": self.sparsity,
        }

    def __str__(self):
        width = max([len(r.layer) for r in self.layers] + [5])
        lines = [f"{'layer':<{width}}  {'total':>10}  {'surviving':>10}  {'sparsity':>8}"]
        for r in self.layers:
            note = "" if r.wrapped else "  (not wrapped)"
            lines.append(
                f"{r.layer:<{width}}  {r.total:>10,}  {r.surviving:>10,}  {r.sparsity:>8.2%}{note}"
            )
        lines.append(
            f"{'total':<{width}}  {self.total:>10,}  {self.surviving:>10,}  {self.sparsity:>8.2%}"
        )
        return "\n".join(lines)

    __repr__ = __str__


def count_nonzero(variable):
    """Number of non-zero entries of a Keras variable."""
    return int(np.count_nonzero(keras.ops.convert_to_numpy(variable.value)))


def _rows(model, specs):
    """`LayerSparsity` rows of `specs` (name, variables, wrapped); the variables of a
    small model are read in one call (see `tf_lottery.batched`)."""
    variables = [v for _, group, _ in specs for v in group]
    count = count_nonzero
    if batched.size(variables) <= batched.BATCH_WEIGHTS:
        values = iter(batched.read(model, "sparsity", variables))

        def count(variable):
            return int(np.count_nonzero(next(values)))

    return [
        LayerSparsity(
            name,
            sum(int(np.prod(v.shape)) for v in group),
            sum(count(v) for v in group),
            wrapped=wrapped,
        )
        for name, group, wrapped in specs
    ]


def sparsity(model, *, per_weight=False):
    """Returns the per-layer and overall sparsity of `model`'s prunable weights.

    Works on wrapped models (counts the masks) and plain ones, e.g. the result of
    `strip` (counts non-zero weights). Layers left out of `wrap` count as dense.
    Rows are named by layer name, or by path in a model wrapped in place, where
    names repeat across blocks.

    Args:
        model: A built Keras model.
        per_weight: One row per weight (`"fc1/kernel"`,
            `"transformer_layer_0/self_attention/query/kernel"`) instead of one
            per layer. Defaults to `False`.

    Returns:
        A `SparsityReport`; `print()` it for a table, or read `.sparsity`,
        `.layers` and `report["layer_name"]`.

    Example:

    ```python
    report = tf_lottery.sparsity(model)
    print(report)                # one row per layer and a total
    report["fc1"].sparsity       # 0.8
    ```
    """
    wrappers = find_wrappers(model)
    inside = {
        id(sub) for w in wrappers for sub in [w.layer, *keras_private.flatten_layers(w.layer)]
    }
    rows = []
    for layer in model_layers(model):
        if isinstance(layer, PruneWrapper):
            if per_weight:
                rows.extend(
                    (f"{layer.target_name}/{m.name}", [m.mask], True) for m in layer.masked_weights
                )
            else:
                masks = [m.mask for m in layer.masked_weights]
                rows.append((layer.target_name, masks, True))
        elif id(layer) not in inside and is_prunable(layer) and layer.built:
            weights = prunable_weights(layer)
            inside.update(id(sub) for sub in keras_private.flatten_layers(layer))
            if not weights:
                continue
            if per_weight:
                prefix = layer.path + "/"
                rows.extend(
                    (w.path if w.path.startswith(prefix) else f"{layer.name}/{w.name}", [w], False)
                    for w in weights
                )
            else:
                rows.append((layer.name, weights, False))
    if not rows:
        raise ValueError(
            f"Model '{model.name}' has no prunable layers (Dense, convolutions, Embedding, "
            "attention, RNN) to report on, or it is not built yet."
        )
    return SparsityReport(tuple(_rows(model, rows)))
