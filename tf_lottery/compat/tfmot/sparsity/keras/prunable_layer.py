"""`PrunableLayer`: a user layer says which of its weights to prune."""

import abc


class PrunableLayer(abc.ABC):
    """tfmot's mixin for a layer of your own that says which weights to prune.

    tf_lottery prunes any layer with a `get_prunable_weights()` method; this
    class only makes that method abstract, as in tfmot.

    Example:

    ```python
    class MyDense(keras.layers.Dense, tfmot.sparsity.keras.PrunableLayer):
        def get_prunable_weights(self):
            return [self.kernel, self.bias]
    ```
    """

    @abc.abstractmethod
    def get_prunable_weights(self):
        """Returns the variables of the layer to prune."""
        raise NotImplementedError
