"""Compatibility layers for code written for other pruning libraries.

`from tf_lottery.compat import tfmot` stands in for
`import tensorflow_model_optimization as tfmot`: code written for tfmot's
pruning API (`tfmot.sparsity.keras`) runs on Keras 3, on tf_lottery's wrappers,
criteria and schedules.
"""
