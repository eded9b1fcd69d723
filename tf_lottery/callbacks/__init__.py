"""The Keras callbacks that prune during `fit`.

`IterativePruning` runs rounds at epoch ends and rewinds (Frankle & Carbin,
Han et al.); `GradualPruning` prunes on a step schedule (Zhu & Gupta, tfmot).
Their parts live beside them: `freezing` (layers held fixed for one fit),
`drop_rule` (stop when a metric falls too far), `scheduled_masks` (mask updates
between training steps) and `sparsity_logs` (the figures added to the logs).
"""

from tf_lottery.callbacks.gradual_pruning import GradualPruning
from tf_lottery.callbacks.iterative_pruning import IterativePruning

__all__ = ["GradualPruning", "IterativePruning"]
