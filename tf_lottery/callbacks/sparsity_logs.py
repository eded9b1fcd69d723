"""The sparsity figures a pruning callback adds to each epoch's logs."""

from tf_lottery.report import sparsity
from tf_lottery.masking import read_threshold


class SparsityLogs:
    """Reads the model's sparsity and turns it into `logs` entries.

    `figures` always has `"sparsity"`, the fraction of prunable weights pruned;
    with `log_layers=True` also `"sparsity/<layer>"` per layer and
    `"threshold/<layer>/<weight>"` (the latest threshold, NaN before the first).

    Args:
        model: The wrapped model.
        wrappers: Its `PruneWrapper`s.
        log_layers: Add the per-layer entries.
    """

    def __init__(self, model, wrappers, log_layers):
        self.model = model
        self.wrappers = wrappers
        self.log_layers = log_layers
        self.update()

    def update(self):
        """Reads the masks (and thresholds) again; call after they change."""
        self.report = sparsity(self.model)
        self.figures = {"sparsity": self.report.sparsity}
        if not self.log_layers:
            return
        self.figures.update({f"sparsity/{r.layer}": r.sparsity for r in self.report.layers})
        for wrapper in self.wrappers:
            for masked in wrapper.masked_weights:
                threshold = read_threshold(masked.threshold)
                self.figures[f"threshold/{wrapper.target_name}/{masked.name}"] = threshold
