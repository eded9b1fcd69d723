"""`PruneLowMagnitude`: tfmot's pruning wrapper, as a tf_lottery `PruneWrapper`."""

import keras

from tf_lottery import keras_private
from tf_lottery.criteria import NMSparsity
from tf_lottery.fraction import PruneFraction
from tf_lottery.registry import is_prunable
from tf_lottery.schedules import ConstantSparsity
from tf_lottery.schedules import Schedule
from tf_lottery.validators import check_choice
from tf_lottery.validators import is_int
from tf_lottery.wrapper import PruneWrapper

# Layers with weights that tfmot leaves dense: it wraps them, but prunes nothing.
NOT_PRUNED = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
)


def prunes(layer):
    """Whether tfmot's API prunes weights of `layer`."""
    return is_prunable(layer) and not isinstance(layer, NOT_PRUNED)


class _AtStepOne(Schedule):
    """tfmot computes an m-by-n mask once, at the first training step."""

    def __call__(self, step):
        return step == 1, None

    def get_config(self):
        return {}


def _check_m_by_n(sparsity_m_by_n):
    if sparsity_m_by_n is None:
        return None
    if (
        not isinstance(sparsity_m_by_n, (tuple, list))
        or len(sparsity_m_by_n) != 2
        or not all(is_int(v) for v in sparsity_m_by_n)
        or not 0 < sparsity_m_by_n[0] < sparsity_m_by_n[1]
    ):
        raise ValueError(
            "Expected sparsity_m_by_n to be a pair (m, n) of integers with 0 < m < n: m "
            f"zeros in every n consecutive weights, e.g. (2, 4). Received: "
            f"sparsity_m_by_n={sparsity_m_by_n!r}"
        )
    return tuple(sparsity_m_by_n)


@keras.saving.register_keras_serializable(package="tf_lottery")
class PruneLowMagnitude(PruneWrapper):
    """tfmot's `PruneLowMagnitude` wrapper on Keras 3.

    A `tf_lottery.PruneWrapper` (masks as the weights' constraints, so pruned
    weights are exactly zero after every step) that also carries tfmot's
    pruning settings; `UpdatePruningStep` reads them and updates the masks.
    Make it with `prune_low_magnitude`.

    Args:
        layer: The layer to prune.
        pruning_schedule: A `ConstantSparsity` or `PolynomialDecay`. Defaults
            to `ConstantSparsity(0.5, 0)`.
        block_size: `(height, width)` of the blocks pruned together in 2-D
            weights. Defaults to `(1, 1)`.
        block_pooling_type: `"AVG"` or `"MAX"`: how a block is scored.
            Defaults to `"AVG"`.
        sparsity_m_by_n: `(m, n)`: m zeros in every n consecutive weights along
            the input dimension, computed once at the first training step, in
            place of the schedule. Defaults to `None`.
        **kwargs: Base layer keyword arguments.
    """

    _default_prefix = "prune_low_magnitude"

    def __init__(
        self,
        layer,
        pruning_schedule=None,
        block_size=(1, 1),
        block_pooling_type="AVG",
        sparsity_m_by_n=None,
        **kwargs,
    ):
        pruning_schedule = pruning_schedule or ConstantSparsity(0.5, 0)
        if not isinstance(pruning_schedule, Schedule) or pruning_schedule.unit != "step":
            raise ValueError(
                "Expected pruning_schedule to be tfmot.sparsity.keras.ConstantSparsity or "
                f"PolynomialDecay. Received: pruning_schedule={pruning_schedule!r}"
            )
        if (
            not isinstance(block_size, (tuple, list))
            or len(block_size) != 2
            or not all(is_int(v) and v > 0 for v in block_size)
        ):
            raise ValueError(
                "Expected block_size to be a pair of positive integers (height, width). "
                f"Received: block_size={block_size!r}"
            )
        check_choice(block_pooling_type, "block_pooling_type", ("AVG", "MAX"))
        sparsity_m_by_n = _check_m_by_n(sparsity_m_by_n)
        if keras_private.input_shape_arg(layer) is not None:
            kwargs.setdefault("input_shape", keras_private.input_shape_arg(layer))
        # tfmot's flow never rewinds: masks only, no copies of the weights.
        kwargs.setdefault("keep", "masks")
        super().__init__(layer, **kwargs)
        self.pruning_schedule = pruning_schedule
        self.block_size = tuple(block_size)
        self.block_pooling_type = block_pooling_type
        self.sparsity_m_by_n = sparsity_m_by_n
        if sparsity_m_by_n:
            m, n = sparsity_m_by_n
            self.criterion = NMSparsity(n - m, n)
        else:
            self.criterion = PruneFraction(
                block=block_size, block_pooling=block_pooling_type.lower()
            )

    @property
    def schedule(self):
        """The schedule `UpdatePruningStep` follows for this layer."""
        return _AtStepOne() if self.sparsity_m_by_n else self.pruning_schedule

    def _prunable_weights(self):
        if isinstance(self.layer, (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)):
            # tfmot prunes the pointwise kernel only.
            return [self.layer.pointwise_kernel]
        return super()._prunable_weights()

    def build(self, input_shape=None):
        super().build(input_shape)
        # Say now, rather than at the first update, when the weights do not fit.
        for masked in self.masked_weights:
            rank = len(masked.variable.shape)
            if self.block_size != (1, 1) and rank != 2:
                argument, needs = f"block_size={self.block_size}", "2-D weights"
            elif self.sparsity_m_by_n and rank < 2:
                argument, needs = f"sparsity_m_by_n={self.sparsity_m_by_n}", "an input dimension"
            else:
                continue
            raise ValueError(
                f"{argument} needs {needs}, but {self.layer.name}/{masked.name} has shape "
                f"{tuple(masked.variable.shape)}. Prune that layer without it."
            )

    def get_config(self):
        return {
            **super().get_config(),
            "pruning_schedule": keras.saving.serialize_keras_object(self.pruning_schedule),
            "block_size": list(self.block_size),
            "block_pooling_type": self.block_pooling_type,
            "sparsity_m_by_n": None if self.sparsity_m_by_n is None else list(self.sparsity_m_by_n),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["pruning_schedule"] = keras.saving.deserialize_keras_object(
            config["pruning_schedule"], custom_objects=custom_objects
        )
        return super().from_config(config, custom_objects=custom_objects)
