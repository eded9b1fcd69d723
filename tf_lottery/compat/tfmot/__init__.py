"""tfmot's pruning API on Keras 3: `tfmot.sparsity.keras`, on tf_lottery.

Replace `import tensorflow_model_optimization as tfmot` with
`from tf_lottery.compat import tfmot` and `tfmot.sparsity.keras.prune_low_magnitude`,
`strip_pruning`, `UpdatePruningStep`, `PruningSummaries`, `ConstantSparsity`,
`PolynomialDecay`, `PrunableLayer` and `prune_scope` work with tfmot's arguments
and meaning. The README's "Coming from tfmot" says where results differ.
"""

from tf_lottery.compat.tfmot import sparsity

__all__ = ["sparsity"]
