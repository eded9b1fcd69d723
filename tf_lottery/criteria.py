"""Pruning criteria: which of the surviving weights to remove in a round.

A criterion is a small serializable object. Its one method to extend,
`compute_mask(target)`, sees one weight tensor (`PruneTarget`) and returns which
of its units (single weights, or blocks with `block=`) to keep, and the threshold
it used. The shared machinery here turns that into a 0/1 mask, multiplies it into
the old mask (masks only shrink, a pruned weight never comes back) and keeps at
least one unit per tensor. Which units go, given their scores, is decided in
`tf_lottery.selection`, one engine for every criterion: global pruning is the
same selection over the concatenated scores of all tensors.

Masks are computed on the host with numpy: pruning runs once per round, never
inside the training step, and numpy works the same under every Keras backend.
"""

import dataclasses
import math
import warnings

import keras
import numpy as np

from tf_lottery.export import blocks as tflite_blocks
from tf_lottery.selection import count_to_drop
from tf_lottery.selection import drop_smallest
from tf_lottery.selection import expand_blocks
from tf_lottery.selection import keep_n_of_m
from tf_lottery.selection import keep_one
from tf_lottery.selection import reduce_blocks
from tf_lottery.selection import target_sparsities
from tf_lottery.validators import check_bool
from tf_lottery.validators import check_choice
from tf_lottery.validators import check_fraction
from tf_lottery.validators import check_instance
from tf_lottery.validators import check_int
from tf_lottery.validators import check_number
from tf_lottery.validators import check_per_layer
from tf_lottery.validators import is_int


@dataclasses.dataclass
class PruneTarget:
    """One weight tensor as a criterion sees it.

    Attributes:
        layer: Name of the wrapped layer, e.g. `"fc1"`.
        name: Name of the weight inside the layer, e.g. `"kernel"`.
        layer_type: Class name of the wrapped layer, e.g. `"Dense"`.
        weight: The trained weight values: a numpy array, or a Keras variable
            that is read only when this tensor's turn comes, so that a round
            holds one tensor at a time in host memory.
        mask: The current 0/1 mask, same shape and kinds as `weight`.
        threshold: The threshold of the previous round, or NaN before the first.
        is_output: Whether this is the model's last prunable layer.
        block: The block shape used for this tensor, `(1, 1)` for single weights.
        scores: Magnitude of each unit: |w|, or the mean (or max) |w| of each
            block.
        alive: Boolean array, True for units that still survive.
        sparsity: The fraction of this tensor's units to have pruned when a
            schedule asks for a target (see `Criterion.compute_target_masks`),
            or `None` for one round of the criterion's own rule.
        input_axes: The axes of `weight` that its layer contracts with the
            input (an EinsumDense kernel's, read from its equation), or `None`
            for the second-to-last axis (Dense and convolution kernels).
    """

    layer: str
    name: str
    layer_type: str
    weight: np.ndarray
    mask: np.ndarray
    threshold: float = math.nan
    is_output: bool = False
    block: tuple = (1, 1)
    scores: np.ndarray | None = None
    alive: np.ndarray | None = None
    sparsity: float | None = None
    input_axes: tuple | None = None


def _check_rate(value, argument):
    return check_fraction(value, argument, meaning="the fraction of surviving weights to prune")


def _check_quality(value, argument):
    return check_number(
        value, argument, meaning="the threshold in units of the layer's standard deviation"
    )


def _check_block(block):
    if isinstance(block, str):
        if block not in tflite_blocks.TFLITE_BLOCKS:
            raise ValueError(
                f"Expected block to be a pair of positive integers or one of "
                f"{sorted(tflite_blocks.TFLITE_BLOCKS)}. Received: block={block!r}"
            )
        return block
    if (
        not isinstance(block, (tuple, list))
        or len(block) != 2
        or not all(is_int(b) and b > 0 for b in block)
    ):
        raise ValueError(
            "Expected block to be a pair of positive integers (rows, columns) in the "
            f"Keras kernel's [in, out] layout, e.g. (4, 1). Received: block={block!r}"
        )
    return tuple(block)


def _read(value):
    """A numpy array from a numpy array or a Keras variable."""
    if isinstance(value, np.ndarray):
        return value
    return np.asarray(keras.ops.convert_to_numpy(value.value if hasattr(value, "value") else value))


def _units(weight, mask, block, pooling):
    """Scores and alive flags per unit (a weight, or a block of weights)."""
    if block == (1, 1):
        return np.abs(weight), mask > 0
    alive = reduce_blocks(mask > 0, block, np.any)
    if pooling == "max":
        # Padding is zero, which never exceeds a magnitude.
        return reduce_blocks(np.abs(weight), block, np.max), alive
    magnitude = np.abs(weight).astype(np.float64)
    sums = reduce_blocks(magnitude, block, np.sum)
    counts = reduce_blocks(np.ones_like(magnitude), block, np.sum)
    return (sums / counts).astype(np.float32), alive


def _with_sparsity(targets, sparsity):
    """`targets` with their `sparsity` set: one value, a dict by layer, or a list."""
    values = target_sparsities([(t.layer, t.name) for t in targets], sparsity)
    return [dataclasses.replace(t, sparsity=v) for t, v in zip(targets, values)]


class Criterion:
    """Base class of pruning criteria.

    Subclasses implement `compute_mask(target)`. Everything else (blocks, masks
    that only shrink, keeping one unit per tensor, serialization) is shared. A
    subclass whose `compute_mask` can also prune to `target.sparsity` (a target
    a schedule asks for, see `compute_target_masks`) sets `accepts_target = True`.

    Args:
        block: `(rows, columns)` of the blocks to prune together in 2-D kernels
            (Keras [in, out] layout), scored by their mean magnitude; a block that
            does not divide a dimension leaves a partial last block. The strings
            `"tflite-float"` and `"tflite-int8"` choose the blocks that TFLite's
            sparse kernels use for Dense layers ((4, 1) and (16, 1)) and prune every
            other weight unstructured. In these modes the last input rows of a
            Dense kernel that do not fill a whole block are pruned at the first
            round: LiteRT computes wrong int8 results when a partial block is
            stored. Defaults to `(1, 1)`: single weights.
        block_pooling: How a block is scored: `"avg"`, the mean |w| of its
            weights, or `"max"`, the largest |w| (tfmot's `block_pooling_type`).
            Defaults to `"avg"`.

    Example, a criterion of your own:

    ```python
    class AbsoluteThreshold(tf_lottery.Criterion):
        # Prunes every surviving weight with |w| below a fixed value.

        def __init__(self, threshold=1e-3, **kwargs):
            super().__init__(**kwargs)
            self.threshold = threshold

        def compute_mask(self, target):
            # target.scores: |w| per unit; True keeps the unit. Dead units stay dead.
            return target.scores >= self.threshold, self.threshold

        def get_config(self):
            return {**super().get_config(), "threshold": self.threshold}
    ```
    """

    # Whether `compute_mask` honours `PruneTarget.sparsity`, so that a schedule
    # can ask for a target sparsity (see `compute_target_masks`).
    accepts_target = False

    # A criterion that needs the model (its graph, gradients on batches of data),
    # not only one tensor at a time, sets this and implements
    # `compute_masks(targets, model=None)`: `prune` then passes the model. Data
    # comes to the criterion's constructor, e.g. `SNIP(data=(x, y))`. The unit
    # criteria (structured.py) and pruning at initialization (init_criteria.py) do.
    uses_model = False

    def __init__(self, block=(1, 1), block_pooling="avg"):
        self.block = _check_block(block)
        self.block_pooling = check_choice(block_pooling, "block_pooling", ("avg", "max"))
        self._warned = set()

    def block_for(self, layer_type, shape):
        """The block shape used for a weight of this layer type and shape."""
        if isinstance(self.block, str):
            return tflite_blocks.block_for(self.block, layer_type)
        return self.block

    def check(self, targets):
        """Raises a ValueError if this criterion cannot prune `targets`.

        Called before anything changes, so a bad setting leaves the model as it
        was. `targets` may be shape-only: `weight` and `mask` are not read.
        """
        for t in targets:
            block = self.block_for(t.layer_type, t.weight.shape)
            if block != (1, 1) and len(t.weight.shape) != 2:
                raise ValueError(
                    f"block={self.block} needs 2-D weights, but {t.layer}/{t.name} has "
                    f"shape {tuple(t.weight.shape)}. Exclude that layer from wrap(), or "
                    "use block='tflite-float'/'tflite-int8', which blocks Dense kernels only."
                )

    def check_target(self):
        """Raises a ValueError if this criterion cannot prune to a target sparsity.

        Schedules such as `ConstantSparsity` and `PolynomialDecay` say which
        sparsity to reach; a criterion that decides by its own rule (a threshold,
        a fixed pattern) cannot follow them.
        """
        if not self.accepts_target:
            raise ValueError(
                f"{self!r} prunes by its own rule and cannot aim at a target sparsity, "
                "which a schedule such as ConstantSparsity or PolynomialDecay asks for. "
                "Use tf_lottery.PruneFraction (magnitude) or RandomPrune with a schedule, "
                f"or run {type(self).__name__} in rounds with IterativePruning."
            )

    def compute_mask(self, target):
        """Returns (keep, threshold) for one tensor.

        Args:
            target: A `PruneTarget` with `scores` and `alive` per unit.

        Returns:
            A boolean array shaped like `target.scores` (True keeps the unit) and
            the threshold used, a float.
        """
        raise NotImplementedError

    def compute_masks(self, targets):
        """Yields (new 0/1 mask, threshold) for each `PruneTarget`, in order.

        Tensors are read and processed one at a time: consume each result
        before the next is computed to keep memory at about one tensor's worth.
        """
        self.check(targets)
        for target in targets:
            target = self._with_units(target)
            yield self._finish(target, *self.compute_mask(target))

    def compute_target_masks(self, targets, sparsity, model=None):
        """Yields (new 0/1 mask, threshold) for each `PruneTarget`, pruning to a target.

        Instead of one round of its rule, the criterion prunes each tensor until
        `sparsity` of its units (weights, or blocks) are pruned, or leaves it as
        it is if it is already that sparse: masks only shrink.

        Args:
            targets: The `PruneTarget`s, as for `compute_masks`.
            sparsity: A fraction in [0, 1) for every tensor, a dict from layer
                name to a fraction, or a list with one fraction per target.
            model: The model, for a criterion that `uses_model`.
        """
        self.check_target()
        targets = _with_sparsity(targets, sparsity)
        if self.uses_model:
            yield from self.compute_masks(targets, model=model)
        else:
            yield from self.compute_masks(targets)

    def _with_units(self, target):
        target = dataclasses.replace(target, weight=_read(target.weight), mask=_read(target.mask))
        block = self.block_for(target.layer_type, target.weight.shape)
        scores, alive = _units(target.weight, target.mask, block, self.block_pooling)
        if isinstance(self.block, str):
            alive = tflite_blocks.without_partial_block(alive, target.weight.shape[0], block)
        return dataclasses.replace(target, block=block, scores=scores, alive=alive)

    def _finish(self, target, keep, threshold):
        keep, kept_one = keep_one(keep, target.scores, target.alive)
        if kept_one:
            key = f"{target.layer}/{target.name}"
            if key not in self._warned:
                self._warned.add(key)
                warnings.warn(
                    f"{self!r} would prune every surviving weight of {key}; its largest "
                    "weight (block) is kept so the layer still passes a signal. Exclude "
                    "the layer or prune it less.",
                    stacklevel=3,
                )
        element_keep = expand_blocks(keep, target.block, target.weight.shape)
        # One new array: the old mask where kept, zero elsewhere (a product keeps
        # the mask's dtype and is many times faster than np.where).
        return np.multiply(target.mask, element_keep), threshold

    def get_config(self):
        config = {"block": list(self.block) if isinstance(self.block, tuple) else self.block}
        if self.block_pooling != "avg":
            # Left out at its default, so that the settings of lottery runs
            # written before the option existed still match.
            config["block_pooling"] = self.block_pooling
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("block"), list):
            config["block"] = tuple(config["block"])
        return cls(**config)

    def __repr__(self):
        config = {**self.get_config(), "block": self.block}
        args = ", ".join(f"{k}={v!r}" for k, v in config.items())
        return f"{type(self).__name__}({args})"


def check_criterion(criterion):
    """A `tf_lottery.Criterion` instance; a ValueError that says what to pass otherwise."""
    return check_instance(
        criterion,
        "criterion",
        Criterion,
        "a tf_lottery criterion such as tf_lottery.PruneFraction(0.2) or "
        "tf_lottery.StdThreshold(0.5)",
    )


@keras.saving.register_keras_serializable(package="tf_lottery")
class StdThreshold(Criterion):
    """Han et al.'s rule: prune every weight with |w| < s·std(w).

    The standard deviation is taken per tensor over the weights that still
    survive (Han et al. 2015, "Learning both Weights and Connections"), so each
    round prunes relative to what is left. With `fixed_std=True` it is taken
    once, from the dense weights at the first round, and the threshold stays
    fixed afterwards (Distiller's sensitivity pruner).

    With blocks, s keeps its meaning: the rule takes the fraction of surviving
    single weights with |w| < s·std(w), and prunes that fraction of the
    surviving blocks, those of smallest mean |w|. So `StdThreshold(1.0)` prunes
    about 68% of Gaussian weights with or without blocks. (Block means
    concentrate around the mean |w|, about 0.8·std for Gaussian weights, so
    comparing them with s·std would prune almost no block at s = 0.3 and almost
    every block at s = 1.5.)

    Args:
        quality: The quality parameter s, a non-negative number; larger prunes
            more. Defaults to `0.5`.
        per_layer: Optional dict from layer name to its own s, for layers that are
            more (smaller s) or less sensitive. Defaults to `None`.
        block: Block shape, see `Criterion`. Defaults to `(1, 1)`.
        fixed_std: Take the std once from the dense weights. Defaults to `False`.
        block_pooling: `"avg"` or `"max"`, see `Criterion`. Defaults to `"avg"`.

    Example:

    ```python
    criterion = tf_lottery.StdThreshold(quality=1.0, per_layer={"conv1": 0.3})
    ```
    """

    def __init__(
        self, quality=0.5, per_layer=None, block=(1, 1), fixed_std=False, block_pooling="avg"
    ):
        super().__init__(block, block_pooling)
        self.quality = _check_quality(quality, "quality")
        self.per_layer = check_per_layer(per_layer, "per_layer", _check_quality)
        self.fixed_std = check_bool(fixed_std, "fixed_std")

    def compute_mask(self, target):
        s = self.per_layer.get(target.layer, self.quality)
        # All alive (a first round): the weights as they are, not a gathered copy.
        survives = target.mask > 0
        survivors = target.weight.reshape(-1) if survives.all() else target.weight[survives]
        if self.fixed_std and not math.isnan(target.threshold) and not target.mask.all():
            threshold = target.threshold
        else:
            threshold = s * float(np.std(survivors)) if survivors.size else 0.0
        if target.block == (1, 1):
            return target.scores >= threshold, threshold
        fraction = np.count_nonzero(np.abs(survivors) < threshold) / max(1, survivors.size)
        alive = int(target.alive.sum())
        count = count_to_drop(alive, target.alive.size, fraction)
        keep, _ = drop_smallest(target.scores, target.alive, count)
        return keep, threshold

    def get_config(self):
        return {
            "quality": self.quality,
            "per_layer": dict(self.per_layer),
            **super().get_config(),
            "fixed_std": self.fixed_std,
        }


@keras.saving.register_keras_serializable(package="tf_lottery")
class NMSparsity(Criterion):
    """N:M sparsity: keeps the `n` largest of every `m` consecutive weights.

    The groups run along the input dimension: the second-to-last axis of the
    kernel, which is the input of Dense and convolution kernels ([in, out],
    [h, w, in, out]), as NVIDIA's 2:4 sparse tensor cores and tfmot's
    `sparsity_m_by_n` use it. For EinsumDense kernels, MultiHeadAttention's
    among them, the input axes are read from the layer's equation: the query
    kernel [in, heads, head_dim] groups along `in`, the output kernel
    [heads, head_dim, out] along `heads × head_dim`. `NMSparsity(2, 4)` leaves at most 2 non-zeros in
    every 4 consecutive inputs of each output (50% sparsity). Masks only shrink:
    a group keeps the `n` largest of its surviving weights, so a group with
    fewer survivors keeps them all, and pruning again changes nothing. When `m`
    does not divide the input dimension, the last group of each row is shorter
    and keeps at most `n` of its weights, as tfmot does with its zero padding.

    The sparsity is fixed by the pattern, so this criterion does not take a
    target from a schedule: apply it once with `tf_lottery.prune`, or in the
    rounds of `IterativePruning`.

    Args:
        n: Weights kept in every group, a positive integer smaller than `m`.
            Defaults to `2`.
        m: Size of the groups. Defaults to `4`.

    Example:

    ```python
    tf_lottery.prune(model, tf_lottery.NMSparsity(2, 4))   # 2:4 sparsity
    ```
    """

    def __init__(self, n=2, m=4):
        super().__init__()
        self.n = check_int(n, "n", minimum=1)
        self.m = check_int(m, "m", minimum=2)
        if n >= m:
            raise ValueError(
                f"Expected n < m: n weights are kept in every group of m. Received: n={n}, m={m}"
            )

    def check(self, targets):
        for t in targets:
            if len(t.weight.shape) < 2:
                raise ValueError(
                    f"NMSparsity groups weights along the input dimension, but "
                    f"{t.layer}/{t.name} has shape {tuple(t.weight.shape)}, with none. "
                    "Exclude that layer from wrap() or from the pruned layers."
                )

    def compute_mask(self, target):
        axes = target.input_axes
        if axes is None:
            return keep_n_of_m(target.scores, target.alive, self.n, self.m), math.nan
        # Groups run along the contraction axes, whatever the kernel's layout
        # (MultiHeadAttention's query kernel is [in, heads, head_dim]): as an
        # [inputs, outputs] matrix, then back.
        rest = [a for a in range(target.scores.ndim) if a not in axes]
        order = [*axes, *rest]
        shape = [target.scores.shape[a] for a in order]
        inputs = int(np.prod(shape[: len(axes)]))

        def as_matrix(array):
            return np.transpose(array, order).reshape(inputs, -1)

        keep = keep_n_of_m(as_matrix(target.scores), as_matrix(target.alive), self.n, self.m)
        return np.transpose(keep.reshape(shape), np.argsort(order)), math.nan

    def get_config(self):
        return {"n": self.n, "m": self.m}
