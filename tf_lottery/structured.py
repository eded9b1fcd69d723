"""Unit criteria: prune whole neurons and filters, so that `shrink` makes models smaller.

A pruned unit is an ordinary mask: its kernel column is zero. The unit's bias,
and the γ and β of a BatchNormalization that follows it, are masked too (the
wrappers' `unit_mask`), so its whole channel is exactly zero and `shrink` can
remove it wherever it goes, also before a `"same"`-padded convolution. So θ0,
rewinding, `IterativePruning`, `find_winning_ticket`, `sensitivity` and the
budget rules work unchanged: a structured lottery ticket is the same call with
another criterion.

Units joined by a residual `Add` (a `ChannelGroup`) are pruned together, scored
by the sum of their scores. Groups that reach the model's output (its classes)
or a layer the analysis does not understand are never pruned.
"""

import math
import warnings

import keras
import numpy as np

from tf_lottery.channels import channel_groups
from tf_lottery.channels import per_channel_axes
from tf_lottery.channels import per_kind_warning
from tf_lottery.channels import unknown_kinds
from tf_lottery.criteria import Criterion
from tf_lottery.criteria import _check_quality
from tf_lottery.criteria import _check_rate
from tf_lottery.criteria import _read
from tf_lottery.selection import count_to_drop
from tf_lottery.selection import cut_of
from tf_lottery.selection import drop_smallest
from tf_lottery.selection import rounded_count
from tf_lottery.validators import check_choice
from tf_lottery.validators import check_int
from tf_lottery.validators import check_per_layer
from tf_lottery.wrapper import find_rewind_wrappers


def _column_norms(kernel, p):
    columns = np.abs(kernel.reshape(-1, kernel.shape[-1]).astype(np.float64))
    return (columns**p).sum(axis=0) ** (1 / p)


def _norm_scores(group, p):
    """Each producer's column norms over its layer's mean, summed over the group."""
    total = np.zeros(group.size)
    for producer in group.producers:
        norms = _column_norms(_read(producer.kernel), p)
        total += norms / max(float(norms.mean()), 1e-12)
    return total


class UnitCriterion(Criterion):
    """Base class of the unit criteria: scores whole output units.

    Subclasses implement `unit_scores(group, wrappers)` (one score per channel
    of a `ChannelGroup`; larger is kept) and may override `prune_count`.
    Everything else is shared: groups, `rate` and `scope`, `per_layer`,
    `round_to`, masks that only shrink, and masking the pruned units' biases and
    BatchNormalization parameters.

    Args:
        rate: Fraction of the surviving units of each group to prune per round,
            in (0, 1). Defaults to `0.2`.
        scope: `"layer"` (each group loses `rate` of its units) or `"global"`
            (the `rate` of all surviving units with the lowest scores, scores
            normalized per layer so that wide layers do not dominate). Defaults
            to `"layer"`.
        per_layer: Optional dict from a producing layer's name to its own rate.
            Defaults to `None`.
        round_to: Keep the number of surviving units of each group a multiple
            of this (hardware runs multiples of 4, 8 or 16 channels best).
            Defaults to `1`.
    """

    uses_model = True

    def __init__(self, rate=0.2, scope="layer", per_layer=None, round_to=1):
        super().__init__()
        self.rate = _check_rate(rate, "rate")
        self.scope = check_choice(scope, "scope", ("layer", "global"))
        self.per_layer = check_per_layer(per_layer, "per_layer", _check_rate)
        self.round_to = check_int(
            round_to, "round_to", minimum=1, meaning="keep unit counts a multiple of it, e.g. 8"
        )

    def check(self, targets):
        for target in targets:
            if target.layer in self.per_layer and target.layer_type in _NO_UNIT_AXIS:
                raise ValueError(
                    f"{type(self).__name__} prunes whole output units, but layer "
                    f"'{target.layer}' ({target.layer_type}) has no unit axis. Unit criteria "
                    "prune Dense and convolution layers. Received: per_layer names "
                    f"'{target.layer}'"
                )

    def unit_scores(self, group, wrappers):
        """One score per channel of `group`; larger is kept."""
        raise NotImplementedError

    def prune_count(self, group, wrappers, scores, alive):
        """How many of the `alive` channels of `group` to prune, scope="layer"."""
        rate = self.per_layer.get(group.producers[0].name, self.rate)
        return count_to_drop(int(alive.sum()), alive.size, rate)

    def compute_masks(self, targets, model=None):
        masks, _ = self.compute_unit_masks(targets, model)
        yield from masks

    def compute_unit_masks(self, targets, model, drop=None):
        """The new masks of `targets` and the new unit masks, computed without changing `model`.

        `tf_lottery.prune` writes both: the masks into the targets' wrappers,
        and each unit mask into its wrapper, whose bias (or BatchNormalization
        γ and β) it then zeroes.

        Args:
            targets: The `PruneTarget`s, as for `compute_masks`.
            model: The model the targets belong to; its graph gives the groups.
            drop: How many surviving units to prune over all groups together,
                as `unit_plan` takes it. Defaults to `None` (`rate` of them).

        Returns:
            A list of (0/1 mask, threshold) pairs, one per target, and a dict
            from layer name to the new 0/1 unit mask of each wrapper with pruned
            units.
        """
        wrappers = {id(w.layer): w for w in find_rewind_wrappers(model)}
        masks = {(t.layer, t.name): _read(t.mask).copy() for t in targets}
        unit_masks = {}
        for group, _, pruned in self.unit_plan(targets, model, drop):
            self._apply(group, pruned, wrappers, masks, unit_masks)
        return [(masks[(t.layer, t.name)], math.nan) for t in targets], unit_masks

    def unit_plan(self, targets, model, drop=None):
        """Which channels of each prunable group a round prunes, without changing `model`.

        Args:
            targets: The `PruneTarget`s of the layers to prune.
            model: The model the targets belong to; its graph gives the groups.
            drop: How many of the surviving units of all groups together to
                prune, those with the smallest scores divided by their group's
                mean (as `scope="global"` ranks them), whatever `scope` is;
                `round_to` still holds per group. `tf_lottery.Target` sets it.
                Defaults to `None`: `rate` of them, as `scope` says.

        Returns:
            A list of `(group, alive, pruned)`: each prunable `ChannelGroup`, the
            boolean flags of its surviving channels, and the indices of the
            channels to prune.
        """
        return self.planner(targets, model)(drop)

    def planner(self, targets, model):
        """`unit_plan` as a function of `drop`, the groups found and scored once.

        For a search over `drop` (`tf_lottery.Target`): `planner(targets,
        model)(drop)` is `unit_plan(targets, model, drop)`.
        """
        if model is None:
            raise ValueError(
                f"{type(self).__name__} needs the model's graph: call "
                "tf_lottery.prune(model, criterion), not criterion.compute_masks(targets)."
            )
        self.check(targets)
        wrappers = {id(w.layer): w for w in find_rewind_wrappers(model)}
        selected = {t.layer for t in targets}
        all_groups = channel_groups(model)
        self._warn_blocked(all_groups)
        groups = [
            g
            for g in all_groups
            if g.prunable
            and all(id(p) in wrappers and hasattr(wrappers[id(p)], "masks") for p in g.producers)
            and all(p.name in selected for p in g.producers)
        ]
        return self._planner(groups, wrappers)

    def _warn_blocked(self, groups):
        for kind, entries in unknown_kinds(groups).items():
            if kind not in self._warned:
                self._warned.add(kind)
                line = per_kind_warning(entries, lambda group: f"the units of {group.name}")
                warnings.warn(f"{type(self).__name__} leaves {line}.", stacklevel=6)

    def _alive(self, group, wrappers):
        unit_mask = _read(wrappers[id(group.producers[0])].unit_mask)
        return unit_mask[: group.size] > 0

    def _planner(self, groups, wrappers):
        """A function from `drop` to (group, alive, indices of the channels to prune) per group."""
        scored = []
        for group in groups:
            alive = self._alive(group, wrappers)
            scores = np.asarray(self.unit_scores(group, wrappers), np.float64)
            scored.append((group, alive, scores))
        # Scores over their layer's mean, so that wide layers do not dominate;
        # each group then loses its units at or below the cut of the pool.
        normalized = [(g, a, s / max(np.mean(s[a]), 1e-12) if a.any() else s) for g, a, s in scored]
        pool = np.concatenate([s[a] for _, a, s in normalized] or [np.zeros(0)])

        def plan(drop):
            pooled = drop is not None or self.scope == "global"
            if pooled:
                total = count_to_drop(pool.size, pool.size, self.rate) if drop is None else drop
                total = min(total, pool.size)
                cut = cut_of(pool.copy(), total) if total > 0 else -np.inf
            plans = []
            for group, alive, scores in normalized if pooled else scored:
                if pooled:
                    count = int(np.count_nonzero(alive & (scores <= cut)))
                else:
                    count = self.prune_count(group, wrappers, scores, alive)
                keep, _ = drop_smallest(
                    scores, alive, rounded_count(int(alive.sum()), count, self.round_to)
                )
                plans.append((group, alive, np.flatnonzero(alive & ~keep)))
            return plans

        return plan

    def _apply(self, group, pruned, wrappers, masks, unit_masks):
        if not len(pruned):
            return
        for producer in group.producers:
            masks[(producer.name, "kernel")][..., pruned] = 0
            _zero_units(unit_masks, wrappers[id(producer)], pruned)
        for follower, offset in group.followers:
            wrapper = wrappers.get(id(follower))
            if wrapper is None:
                continue
            channels = [offset + c for c in pruned]
            if (follower.name, "kernel") in masks:  # a depthwise convolution
                mask = masks[(follower.name, "kernel")]
                axis = per_channel_axes(follower)["kernel"] % mask.ndim
                mask[(slice(None),) * axis + (channels,)] = 0
            _zero_units(unit_masks, wrapper, channels)

    def get_config(self):
        return {
            "rate": self.rate,
            "scope": self.scope,
            "per_layer": dict(self.per_layer),
            "round_to": self.round_to,
        }

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


_NO_UNIT_AXIS = (
    "Embedding",
    "EinsumDense",
    "MultiHeadAttention",
    "SimpleRNN",
    "LSTM",
    "GRU",
    "SeparableConv1D",
    "SeparableConv2D",
    "Conv1DTranspose",
    "Conv2DTranspose",
    "Conv3DTranspose",
)


def _zero_units(unit_masks, wrapper, units):
    """Zeroes `units` in the new unit mask of `wrapper`, starting from its current one."""
    if wrapper.unit_mask is None:
        return
    name = wrapper.layer.name
    if name not in unit_masks:
        unit_masks[name] = _read(wrapper.unit_mask).copy()
    unit_masks[name][units] = 0


@keras.saving.register_keras_serializable(package="tf_lottery")
class UnitNorm(UnitCriterion):
    """Prunes the output units with the smallest weight norm (Li et al. 2017).

    The score of a unit (a Dense neuron, a convolution filter) is the L1 or L2
    norm of its incoming weights, its kernel column; units joined by a residual
    `Add` are scored by the sum of their norms, each divided by its layer's mean.

    Args:
        rate: Fraction of surviving units to prune per round. Defaults to `0.2`.
        p: `1` or `2`, the norm. Defaults to `2`.
        scope: `"layer"` or `"global"`. Defaults to `"layer"`.
        per_layer: Optional dict from layer name to rate. Defaults to `None`.
        round_to: Keep unit counts a multiple of this. Defaults to `1`.

    Example:

    ```python
    tf_lottery.prune(model, tf_lottery.UnitNorm(0.5, round_to=8))
    small = tf_lottery.shrink(model)
    ```
    """

    def __init__(self, rate=0.2, p=2, scope="layer", per_layer=None, round_to=1):
        super().__init__(rate, scope, per_layer, round_to)
        self.p = check_choice(p, "p", (1, 2), meaning="the norm")

    def unit_scores(self, group, wrappers):
        return _norm_scores(group, self.p)

    def get_config(self):
        return {**super().get_config(), "p": self.p}


@keras.saving.register_keras_serializable(package="tf_lottery")
class BatchNormScale(UnitCriterion):
    """Prunes the channels whose BatchNormalization scale |γ| is smallest.

    Network Slimming (Liu et al. 2017): a channel's importance is the |γ| of the
    BatchNormalization that follows it (train with an L1 penalty on γ to push
    unimportant ones to zero). Every pruned layer needs a BatchNormalization
    after it.

    Args:
        rate: Fraction of surviving channels to prune per round. Defaults to `0.2`.
        scope: `"layer"` or `"global"`. Defaults to `"layer"`.
        per_layer: Optional dict from layer name to rate. Defaults to `None`.
        round_to: Keep channel counts a multiple of this. Defaults to `1`.

    Example:

    ```python
    tf_lottery.prune(model, tf_lottery.BatchNormScale(0.3, scope="global"))
    ```
    """

    def unit_scores(self, group, wrappers):
        scales = [
            (np.abs(_read(follower.gamma)), offset)
            for follower, offset in group.followers
            if isinstance(follower, keras.layers.BatchNormalization) and follower.scale
        ]
        if not scales:
            raise ValueError(
                f"BatchNormScale scores channels by the γ of the BatchNormalization that "
                f"follows them, but layer '{group.name}' has none after it. Use UnitNorm for "
                "it, or exclude it from wrap()."
            )
        total = np.zeros(group.size)
        for gamma, offset in scales:
            part = gamma[offset : offset + group.size]
            total += part / max(float(part.mean()), 1e-12)
        return total


@keras.saving.register_keras_serializable(package="tf_lottery")
class UnitStdThreshold(UnitCriterion):
    """Han's rule for whole units: s sets how many, the smallest L2 norms go.

    The literal rule, norm < s·std(norms), almost never fires: unit norms
    concentrate (the column norms of a 784x300 Gaussian kernel have mean 28 and
    std 0.67). Instead s means what it means for single weights: the fraction of
    a group's surviving weights with |w| < s·std(w) is the fraction of its
    surviving units that is pruned, those of smallest L2 norm, as
    `StdThreshold` does with blocks.

    Args:
        quality: The quality parameter s, a non-negative number; larger prunes
            more. Defaults to `0.5`.
        per_layer: Optional dict from layer name to its own s. Defaults to `None`.
        round_to: Keep unit counts a multiple of this. Defaults to `1`.

    Example:

    ```python
    pruning = tf_lottery.IterativePruning(tf_lottery.UnitStdThreshold(0.7), rewind=None)
    ```
    """

    def __init__(self, quality=0.5, per_layer=None, round_to=1):
        super().__init__(0.5, "layer", None, round_to)
        self.quality = _check_quality(quality, "quality")
        self.per_layer = check_per_layer(per_layer, "per_layer", _check_quality)

    def unit_scores(self, group, wrappers):
        return _norm_scores(group, 2)

    def prune_count(self, group, wrappers, scores, alive):
        s = self.per_layer.get(group.producers[0].name, self.quality)
        below, survivors = 0, 0
        for producer in group.producers:
            kernel = _read(producer.kernel)
            mask = _read(wrappers[id(producer)].masks["kernel"])
            alive_weights = kernel[(mask > 0) & alive.reshape((1,) * (kernel.ndim - 1) + (-1,))]
            if alive_weights.size:
                below += int(np.count_nonzero(np.abs(alive_weights) < s * alive_weights.std()))
                survivors += alive_weights.size
        fraction = below / survivors if survivors else 0.0
        return count_to_drop(int(alive.sum()), alive.size, fraction)

    def get_config(self):
        return {
            "quality": self.quality,
            "per_layer": dict(self.per_layer),
            "round_to": self.round_to,
        }
