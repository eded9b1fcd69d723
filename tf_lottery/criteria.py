"""Pruning criteria: which of the surviving weights to remove in a round.

A criterion is a small serializable object. Its one method to extend,
`compute_mask(target)`, sees one weight tensor (`PruneTarget`) and returns which
of its units (single weights, or blocks with `block=`) to keep, and the threshold
it used. The shared machinery here turns that into a 0/1 mask, multiplies it into
the old mask (masks only shrink, a pruned weight never comes back) and keeps at
least one unit per tensor. Global pruning is the same computation over all
tensors at once.

Masks are computed on the host with numpy: pruning runs once per round, never
inside the training step, and numpy works the same under every Keras backend.
"""

import dataclasses
import math
import warnings

import keras
import numpy as np

# Block shapes in the Keras kernel's [in, out] layout that TFLite's sparse
# FULLY_CONNECTED kernels can use: 1x4 (float) or 1x16 (int8) blocks along the
# input dimension of TFLite's [out, in] weights.
TFLITE_BLOCKS = {"tflite-float": (4, 1), "tflite-int8": (16, 1)}


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
        scores: Magnitude of each unit: |w|, or the mean |w| of each block.
        alive: Boolean array, True for units that still survive.
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


def _check_rate(value, argument):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(
            f"Expected {argument} to be a number strictly between 0 and 1 (the fraction "
            f"of surviving weights to prune). Received: {argument}={value!r}"
        )
    return float(value)


def _check_quality(value, argument):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(
            f"Expected {argument} to be a non-negative number (the threshold in units of "
            f"the layer's standard deviation). Received: {argument}={value!r}"
        )
    return float(value)


def _check_block(block):
    if isinstance(block, str):
        if block not in TFLITE_BLOCKS:
            raise ValueError(
                f"Expected block to be a pair of positive integers or one of "
                f"{sorted(TFLITE_BLOCKS)}. Received: block={block!r}"
            )
        return block
    if (
        not isinstance(block, (tuple, list))
        or len(block) != 2
        or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)
    ):
        raise ValueError(
            "Expected block to be a pair of positive integers (rows, columns) in the "
            f"Keras kernel's [in, out] layout, e.g. (4, 1). Received: block={block!r}"
        )
    return tuple(block)


def _check_per_layer(per_layer, check_value, argument):
    if per_layer is None:
        return {}
    if not isinstance(per_layer, dict):
        raise ValueError(
            f"Expected {argument} to be a dict from layer name to value. "
            f"Received: {argument}={per_layer!r}"
        )
    return {name: check_value(v, f"{argument}[{name!r}]") for name, v in per_layer.items()}


def _read(value):
    """A numpy array from a numpy array or a Keras variable."""
    if isinstance(value, np.ndarray):
        return value
    return np.asarray(keras.ops.convert_to_numpy(value.value if hasattr(value, "value") else value))


def _block_view(array, block, reduce):
    """Reduces a 2-D array over (r, c) blocks; the last block may be partial."""
    r, c = block
    rows, cols = array.shape
    padded = np.zeros((-(-rows // r) * r, -(-cols // c) * c), dtype=array.dtype)
    padded[:rows, :cols] = array
    blocks = padded.reshape(padded.shape[0] // r, r, padded.shape[1] // c, c)
    return reduce(blocks, axis=(1, 3))


def _units(weight, mask, block):
    """Scores and alive flags per unit (a weight, or a block of weights)."""
    if block == (1, 1):
        return np.abs(weight), mask > 0
    magnitude = np.abs(weight).astype(np.float64)
    sums = _block_view(magnitude, block, np.sum)
    counts = _block_view(np.ones_like(magnitude), block, np.sum)
    alive = _block_view(mask > 0, block, np.any)
    return (sums / counts).astype(np.float32), alive


def _expand(keep, block, shape):
    """The element mask of a unit mask (inverse of `_units`)."""
    if block == (1, 1):
        return keep
    r, c = block
    return np.repeat(np.repeat(keep, r, axis=0), c, axis=1)[: shape[0], : shape[1]]


def _prune_smallest(scores, alive, count):
    """Keep-flags that drop exactly `count` alive units with the smallest scores.

    Ties at the cut are broken by position, so the count is exact.
    """
    keep = alive.copy()
    if count <= 0:
        return keep, math.nan
    alive_scores = scores[alive]
    alive_scores.partition(count - 1)
    cut = alive_scores[count - 1]
    below = alive & (scores < cut)
    keep &= ~below
    at_cut = np.flatnonzero(alive & (scores == cut))
    keep.flat[at_cut[: count - int(below.sum())]] = False
    return keep, float(cut)


class Criterion:
    """Base class of pruning criteria.

    Subclasses implement `compute_mask(target)`. Everything else (blocks, masks
    that only shrink, keeping one unit per tensor, serialization) is shared.

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

    # A criterion that needs the model (its graph, gradients on batches of data),
    # not only one tensor at a time, sets this and implements
    # `compute_masks(targets, model=None)`: `prune` then passes the model. Data
    # comes to the criterion's constructor, e.g. `SNIP(data=(x, y))`. The unit
    # criteria (structured.py) and pruning at initialization (init_criteria.py) do.
    uses_model = False

    def __init__(self, block=(1, 1)):
        self.block = _check_block(block)
        self._warned = set()

    def block_for(self, layer_type, shape):
        """The block shape used for a weight of this layer type and shape."""
        if isinstance(self.block, str):
            return TFLITE_BLOCKS[self.block] if layer_type == "Dense" else (1, 1)
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

    def _with_units(self, target):
        target = dataclasses.replace(target, weight=_read(target.weight), mask=_read(target.mask))
        block = self.block_for(target.layer_type, target.weight.shape)
        scores, alive = _units(target.weight, target.mask, block)
        rows = target.weight.shape[0]
        if isinstance(self.block, str) and block != (1, 1) and rows % block[0] and rows > block[0]:
            # LiteRT's sparse int8 kernel computes wrong results when a partial
            # block is stored (measured with ai-edge-litert 2.3), so the TFLite
            # modes prune the input rows that do not fill a whole block.
            alive = alive.copy()
            alive[-1, :] = False
        return dataclasses.replace(target, block=block, scores=scores, alive=alive)

    def _finish(self, target, keep, threshold):
        keep = keep & target.alive
        if not keep.any() and target.alive.any():
            alive_scores = np.where(target.alive, target.scores, -np.inf)
            keep.flat[int(np.argmax(alive_scores))] = True
            key = f"{target.layer}/{target.name}"
            if key not in self._warned:
                self._warned.add(key)
                warnings.warn(
                    f"{self!r} would prune every surviving weight of {key}; its largest "
                    "weight (block) is kept so the layer still passes a signal. Exclude "
                    "the layer or prune it less.",
                    stacklevel=3,
                )
        element_keep = _expand(keep, target.block, target.weight.shape)
        # One new array: the old mask where kept, zero elsewhere.
        return np.where(element_keep, target.mask, target.mask.dtype.type(0)), threshold

    def get_config(self):
        return {"block": list(self.block) if isinstance(self.block, tuple) else self.block}

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

    Example:

    ```python
    criterion = tf_lottery.StdThreshold(quality=1.0, per_layer={"conv1": 0.3})
    ```
    """

    def __init__(self, quality=0.5, per_layer=None, block=(1, 1), fixed_std=False):
        super().__init__(block)
        self.quality = _check_quality(quality, "quality")
        self.per_layer = _check_per_layer(per_layer, _check_quality, "per_layer")
        if not isinstance(fixed_std, bool):
            raise ValueError(
                f"Expected fixed_std to be True or False. Received: fixed_std={fixed_std!r}"
            )
        self.fixed_std = fixed_std

    def compute_mask(self, target):
        s = self.per_layer.get(target.layer, self.quality)
        survivors = target.weight[target.mask > 0]
        if self.fixed_std and not math.isnan(target.threshold) and not target.mask.all():
            threshold = target.threshold
        else:
            threshold = s * float(np.std(survivors)) if survivors.size else 0.0
        if target.block == (1, 1):
            return target.scores >= threshold, threshold
        fraction = np.count_nonzero(np.abs(survivors) < threshold) / max(1, survivors.size)
        keep, _ = _prune_smallest(
            target.scores, target.alive, round(fraction * int(target.alive.sum()))
        )
        return keep, threshold

    def get_config(self):
        return {
            "quality": self.quality,
            "per_layer": dict(self.per_layer),
            **super().get_config(),
            "fixed_std": self.fixed_std,
        }


@keras.saving.register_keras_serializable(package="tf_lottery")
class PruneFraction(Criterion):
    """Frankle & Carbin's rule: prune a fraction of the surviving weights.

    Each round removes `rate` of the weights that still survive, those of
    smallest magnitude, per layer or (`scope="global"`) across all layers at once.
    As in the Lottery Ticket paper, the output layer is pruned at half the rate
    (fully-connected layers 20% and the output layer 10% per round) unless
    `output_rate` or `per_layer` says otherwise. The output layer is the model's
    last prunable layer.

    Args:
        rate: Fraction of the surviving weights to prune per round, in (0, 1).
            Defaults to `0.2`.
        scope: `"layer"` (each tensor loses `rate` of its weights) or `"global"`
            (the smallest `rate` of all surviving weights, wherever they are).
            Defaults to `"layer"`.
        per_layer: Optional dict from layer name to its own rate. Only with
            `scope="layer"`. Defaults to `None`.
        block: Block shape, see `Criterion`. Defaults to `(1, 1)`.
        output_rate: Rate of the output layer with `scope="layer"`; `None` means
            `rate / 2`. Defaults to `None`.

    Example:

    ```python
    criterion = tf_lottery.PruneFraction(0.2)              # 20% per round, 10% output
    global_criterion = tf_lottery.PruneFraction(0.2, scope="global")
    ```
    """

    def __init__(self, rate=0.2, scope="layer", per_layer=None, block=(1, 1), output_rate=None):
        super().__init__(block)
        self.rate = _check_rate(rate, "rate")
        if scope not in ("layer", "global"):
            raise ValueError(f"Expected scope='layer' or 'global'. Received: scope={scope!r}")
        self.scope = scope
        self.per_layer = _check_per_layer(per_layer, _check_rate, "per_layer")
        if scope == "global" and self.per_layer:
            raise ValueError(
                "per_layer rates only apply with scope='layer'; global pruning ranks all "
                f"weights together. Received: scope='global', per_layer={per_layer!r}"
            )
        self.output_rate = None if output_rate is None else _check_rate(output_rate, "output_rate")

    def rate_for(self, target):
        """The rate for one tensor: per_layer, then output_rate, then rate."""
        if target.layer in self.per_layer:
            return self.per_layer[target.layer]
        if target.is_output:
            return self.rate / 2 if self.output_rate is None else self.output_rate
        return self.rate

    def scores(self, target, key):
        """The ranking score of each unit; magnitude here, random in `RandomPrune`.

        `key` identifies the tensor within a round, so a score can be computed
        again (global scope reads each tensor twice).
        """
        return target.scores

    def _draw_seed(self):
        return None

    def compute_mask(self, target):
        count = round(self.rate_for(target) * int(target.alive.sum()))
        return _prune_smallest(self.scores(target, (self._draw_seed(),)), target.alive, count)

    def compute_masks(self, targets):
        if self.scope == "layer":
            yield from super().compute_masks(targets)
            return
        # Global scope: the same ranking over all tensors at once, in two passes
        # that each hold one tensor plus the surviving scores, never every
        # tensor's weights together.
        self.check(targets)
        seed = self._draw_seed()
        parts = []
        for index, target in enumerate(targets):
            unit = self._with_units(target)
            parts.append(self.scores(unit, (seed, index))[unit.alive])
        alive_scores = np.concatenate(parts)
        del parts
        count = round(self.rate * alive_scores.size)
        if count > 0:
            alive_scores.partition(count - 1)
            cut = float(alive_scores[count - 1])
            ties = count - int(np.count_nonzero(alive_scores < cut))
        else:
            cut, ties = -np.inf, 0
        del alive_scores
        for index, target in enumerate(targets):
            unit = self._with_units(target)
            scores = self.scores(unit, (seed, index))
            keep = unit.alive & (scores > cut)
            at_cut = np.flatnonzero(unit.alive & (scores == cut))
            keep.flat[at_cut[ties:]] = True
            ties = max(0, ties - at_cut.size)
            yield self._finish(unit, keep, cut if count > 0 else math.nan)

    def get_config(self):
        return {
            "rate": self.rate,
            "scope": self.scope,
            "per_layer": dict(self.per_layer),
            **super().get_config(),
            "output_rate": self.output_rate,
        }


@keras.saving.register_keras_serializable(package="tf_lottery")
class RandomPrune(PruneFraction):
    """A control: prunes surviving weights at random, as many as `PruneFraction`.

    Same per-layer counts (and the same halved output-layer rate) as
    `PruneFraction` with the same arguments, but which weights go is random:
    the control of the Lottery Ticket paper that shows magnitude matters.

    Args:
        rate: Fraction of surviving weights to prune per round. Defaults to `0.2`.
        scope: `"layer"` or `"global"`. Defaults to `"layer"`.
        per_layer: Optional dict from layer name to rate. Defaults to `None`.
        block: Block shape, see `Criterion`. Defaults to `(1, 1)`.
        output_rate: Rate of the output layer; `None` means `rate / 2`.
        seed: Integer seed. `None` draws from numpy's global generator, which
            `keras.utils.set_random_seed` seeds. Defaults to `None`.

    Example:

    ```python
    control = tf_lottery.RandomPrune(0.2, seed=1)
    ```
    """

    def __init__(
        self, rate=0.2, scope="layer", per_layer=None, block=(1, 1), output_rate=None, seed=None
    ):
        super().__init__(rate, scope, per_layer, block, output_rate)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"Expected seed to be an integer or None. Received: seed={seed!r}")
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def _draw_seed(self):
        # From this criterion's own generator, or numpy's global one (which
        # keras.utils.set_random_seed seeds) when no seed was given.
        if self.seed is None:
            return int(np.random.randint(2**31))
        return int(self._rng.integers(2**31))

    def scores(self, target, key):
        return np.random.default_rng(key).random(target.scores.shape).astype(np.float32)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}
