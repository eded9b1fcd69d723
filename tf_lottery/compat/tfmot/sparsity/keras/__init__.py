"""`tfmot.sparsity.keras` on Keras 3, backed by tf_lottery.

The names and arguments of tfmot's pruning API. `ConstantSparsity` and
`PolynomialDecay` are tf_lottery's schedules (same arguments, formulas and step
numbering; called with a step they return Python values, not tensors).
"""

from tf_lottery.compat.tfmot.sparsity.keras.prunable_layer import PrunableLayer
from tf_lottery.compat.tfmot.sparsity.keras.prune import prune_low_magnitude
from tf_lottery.compat.tfmot.sparsity.keras.prune import prune_scope
from tf_lottery.compat.tfmot.sparsity.keras.prune import strip_pruning
from tf_lottery.compat.tfmot.sparsity.keras.pruning_callbacks import PruningSummaries
from tf_lottery.compat.tfmot.sparsity.keras.pruning_callbacks import UpdatePruningStep
from tf_lottery.compat.tfmot.sparsity.keras.pruning_wrapper import PruneLowMagnitude
from tf_lottery.schedules import ConstantSparsity
from tf_lottery.schedules import PolynomialDecay
from tf_lottery.schedules import Schedule as PruningSchedule

__all__ = [
    "ConstantSparsity",
    "PolynomialDecay",
    "PrunableLayer",
    "PruneLowMagnitude",
    "PruningSchedule",
    "PruningSummaries",
    "UpdatePruningStep",
    "prune_low_magnitude",
    "prune_scope",
    "strip_pruning",
]


def __getattr__(name):
    if name in ("PruningPolicy", "PruneForLatencyOnXNNPack"):
        raise AttributeError(
            f"tfmot.sparsity.keras.{name} is not supported by tf_lottery.compat.tfmot. To "
            "prune some layers only, call prune_low_magnitude(layer) inside "
            "keras.models.clone_model(model, clone_function=...); for sparse kernels that "
            "LiteRT runs fast, prune with tf_lottery.PruneFraction(block='tflite-float') and "
            "export with tf_lottery.export_tflite."
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
