"""`tfmot.sparsity`: only the Keras pruning API, `tfmot.sparsity.keras`."""

from tf_lottery.compat.tfmot.sparsity import keras

__all__ = ["keras"]
