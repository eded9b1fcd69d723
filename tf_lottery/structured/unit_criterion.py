"""`UnitCriterion`: the base of the unit criteria, from scores per unit to unit masks.

A unit criterion scores the units of each group (`unit_scores`, or `scorer`
for one that needs the model and data), says how many go (`prune_count`), and
this base does the rest: the groups of the model (channel groups, attention
heads, KerasHub blocks), per layer or global selection with `round_to`, the
ties of KerasHub blocks, and the weight and unit masks, without changing the
model (`tf_lottery.prune` writes them).
"""

import math
import warnings

import numpy as np

from tf_lottery.criteria import Criterion
from tf_lottery.criteria import _check_rate
from tf_lottery.criteria import _read
from tf_lottery.registry import per_channel_axes
from tf_lottery.registry import without_units
from tf_lottery.selection import count_to_drop
from tf_lottery.selection import drop_smallest
from tf_lottery.selection import drop_smallest_across
from tf_lottery.selection import rounded_count
from tf_lottery.selection import shared_counts
from tf_lottery.structured.channels import channel_groups
from tf_lottery.structured.channels import per_kind_warning
from tf_lottery.structured.channels import unknown_kinds
from tf_lottery.structured.heads import head_groups
from tf_lottery.structured.hub_units import attention_groups
from tf_lottery.structured.hub_units import attention_note
from tf_lottery.structured.hub_units import feed_forward_groups
from tf_lottery.validators import check_choice
from tf_lottery.validators import check_int
from tf_lottery.validators import check_per_layer
from tf_lottery.wrapper import find_rewind_wrappers


def _unit_norms(part, size, p):
    entries = np.abs(part.per_unit(_read(part.variable), size).astype(np.float64))
    return (entries**p).sum(axis=1) ** (1 / p)


def norm_scores(group, p):
    """The norms of each unit's incoming weights, per weight over its mean, summed.

    A Dense neuron's kernel column; a head's query, key and value slices.
    """
    total = np.zeros(group.size)
    for part in group.incoming:
        norms = _unit_norms(part, group.size, p)
        total += norms / max(float(norms.mean()), 1e-12)
    return total


class UnitCriterion(Criterion):
    """Base class of the unit criteria: scores whole output units.

    Subclasses implement `unit_scores(group, wrappers)` (one score per unit of
    a `ChannelGroup` or `HeadGroup`; larger is kept), or `scorer` where scores
    need a pass over data first, and may override `prune_count`. Everything
    else is shared: groups, `rate` and `scope`, `per_layer`, `round_to`, masks
    that only shrink, and masking the pruned units' biases and
    BatchNormalization parameters (or, for heads, their output rows).

    A subclass whose `prune_count` decides how many units go by a rule of its
    own sets `by_rate = False`; it then takes no `rate`, and `per_layer` holds
    the values of its rule (`UnitStdThreshold`'s s).

    Args:
        rate: Fraction of the surviving units of each group to prune per round,
            in (0, 1). Not used when `by_rate` is False. Defaults to `0.2`.
        scope: `"layer"` (each group loses `rate` of its units) or `"global"`
            (the `rate` of all surviving units with the lowest scores, scores
            normalized per layer so that wide layers do not dominate). Defaults
            to `"layer"`.
        per_layer: Optional dict from a producing layer's name to its own rate.
            Defaults to `None`.
        round_to: Keep the number of surviving units of each group a multiple
            of this (hardware runs multiples of 4, 8 or 16 channels best).
            Defaults to `1`.

    In a KerasHub model the feed-forward units of the transformer blocks are
    the groups (up and gate columns, biases, down row), and every block of a
    Backbone loses as many: the mean of what `rate` and `scope` give each,
    each block choosing its own by score. So do the key/value groups of a
    Gemma block's attention (each with its query heads); the heads of other
    KerasHub blocks are left whole.
    """

    uses_model = True
    # Whether the criterion scores attention heads too (`tf_lottery.structured.heads`).
    prunes_heads = True
    # Whether `rate` says how many units each group loses.
    by_rate = True

    def __init__(self, rate=0.2, scope="layer", per_layer=None, round_to=1):
        super().__init__()
        self.rate = _check_rate(rate, "rate") if self.by_rate else None
        self.scope = check_choice(scope, "scope", ("layer", "global"))
        self.per_layer = check_per_layer(per_layer, "per_layer", self.check_value)
        self.round_to = check_int(
            round_to, "round_to", minimum=1, meaning="keep unit counts a multiple of it, e.g. 8"
        )

    def check(self, targets):
        for target in targets:
            if target.layer in self.per_layer and target.layer_type in without_units():
                raise ValueError(
                    f"{type(self).__name__} prunes whole output units, but layer "
                    f"'{target.layer}' ({target.layer_type}) has no unit axis. Unit criteria "
                    "prune Dense and convolution layers. Received: per_layer names "
                    f"'{target.layer}'"
                )

    def unit_scores(self, group, wrappers):
        """One score per unit of `group`; larger is kept."""
        raise NotImplementedError

    def scorer(self, groups, model, wrappers):
        """A function from a group to its scores, for the `groups` about to be pruned.

        Called once per round, before any score: a criterion that calibrates
        (`UnitActivation`) runs its passes here, for all groups at once. The
        default scores each group with `unit_scores`.
        """
        return lambda group: self.unit_scores(group, wrappers)

    def check_value(self, value, argument):
        """A value of `per_layer`, checked: a rate, or the value of a subclass's own rule."""
        return _check_rate(value, argument)

    def value_for(self, group, wrappers, default):
        """`per_layer`'s value for `group`, by its producer's name, or `default`."""
        return self.per_layer.get(_name(group.producers[0], wrappers), default)

    def prune_count(self, group, wrappers, scores, alive):
        """How many of the `alive` channels of `group` to prune, scope="layer"."""
        rate = self.value_for(group, wrappers, self.rate)
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
            from the wrapper's `target_name` (a layer's name, or its path when
            wrapped in place) to the new 0/1 unit mask of each wrapper with
            pruned units.
        """
        plans = self.unit_plan(targets, model, drop)
        wrappers = {id(w.layer): w for w in find_rewind_wrappers(model)}
        # The new masks, by the id of the variable they mask.
        masks = {id(t.weight): _read(t.mask).copy() for t in targets}
        unit_masks = {}
        for group, _, pruned in plans:
            self._apply(group, pruned, wrappers, masks, unit_masks)
        return [(masks[id(t.weight)], math.nan) for t in targets], unit_masks

    def unit_plan(self, targets, model, drop=None):
        """Which units of each prunable group a round prunes, without changing `model`.

        Args:
            targets: The `PruneTarget`s of the layers to prune.
            model: The model the targets belong to; its graph gives the groups.
            drop: How many of the surviving units of all groups together to
                prune, those with the smallest scores divided by their group's
                mean (as `scope="global"` ranks them), whatever `scope` is;
                `round_to` still holds per group. `tf_lottery.Target` sets it.
                Defaults to `None`: `rate` of them, as `scope` says.

        Returns:
            A list of `(group, alive, pruned)`: each prunable group (a
            `ChannelGroup` or a `heads.HeadGroup`), the boolean flags of its
            surviving units, and the indices of the units to prune.
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
        # The current masks, by the id of the variable they mask.
        masks = {id(t.weight): _read(t.mask) for t in targets}
        all_groups = _unit_groups(model)
        self._warn_blocked(all_groups)
        self._warn_attention(model)
        if self.prunes_heads:
            all_groups += head_groups(model) + attention_groups(model)
        groups = [
            g
            for g in all_groups
            if g.prunable
            and all(id(p) in wrappers and hasattr(wrappers[id(p)], "masks") for p in g.producers)
            and all(id(part.variable) in masks for part in g.masked)
        ]
        return self._planner(groups, self.scorer(groups, model, wrappers), wrappers, masks)

    def _warn_blocked(self, groups):
        for kind, entries in unknown_kinds(groups).items():
            if kind not in self._warned:
                self._warned.add(kind)
                line = per_kind_warning(entries, lambda group: f"the units of {group.name}")
                warnings.warn(f"{type(self).__name__} leaves {line}.", stacklevel=6)

    def _warn_attention(self, model):
        note = attention_note(model)
        if note is not None and "attention" not in self._warned:
            self._warned.add("attention")
            warnings.warn(f"{type(self).__name__} leaves {note}.", stacklevel=6)

    def _alive(self, group, wrappers, masks):
        unit_mask = wrappers[id(group.producers[0])].unit_mask
        if unit_mask is not None:
            return _read(unit_mask)[: group.size] > 0
        # A head has no unit mask: it is alive while any of its weights is.
        return np.any(
            [np.any(p.per_unit(masks[id(p.variable)], group.size), axis=1) for p in group.masked],
            axis=0,
        )

    def _planner(self, groups, score, wrappers, masks):
        """A function from `drop` to (group, alive, indices of the units to prune) per group.

        `score(group)` gives a group's scores, computed here once.
        """
        scored = []
        for group in groups:
            alive = self._alive(group, wrappers, masks)
            scores = np.asarray(score(group), np.float64)
            scored.append((group, alive, scores))
        self._check_tied_rates(groups, wrappers)
        # Scores over their layer's mean, so that wide layers do not dominate.
        normalized = [(g, a, s / max(np.mean(s[a]), 1e-12) if a.any() else s) for g, a, s in scored]

        def plan(drop):
            pooled = drop is not None or self.scope == "global"
            if pooled:
                counts = self._pooled_counts(normalized, drop)
            else:
                counts = [
                    self.prune_count(group, wrappers, scores, alive)
                    for group, alive, scores in scored
                ]
            counts = shared_counts(counts, [group.tie for group in groups])
            plans = []
            for (group, alive, scores), count in zip(normalized if pooled else scored, counts):
                keep, _ = drop_smallest(
                    scores, alive, rounded_count(int(alive.sum()), count, self.round_to)
                )
                plans.append((group, alive, np.flatnonzero(alive & ~keep)))
            return plans

        return plan

    def _pooled_counts(self, normalized, drop):
        """How many units each group loses when all groups are ranked together.

        Global pruning over the concatenated normalized scores; each group
        loses its units at or below the cut, ties included, and `round_to` is
        applied to that count per group afterwards.
        """

        def parts():
            return ((alive, scores, alive) for _, alive, scores in normalized)

        def by_rate(alive, units):
            return count_to_drop(alive, units, self.rate)

        dropped = drop_smallest_across(parts, by_rate if drop is None else drop, ties="all")
        return [int(np.count_nonzero(alive & ~keep)) for alive, keep, _ in dropped]

    def _check_tied_rates(self, groups, wrappers):
        """Tied groups lose as many units: `per_layer` cannot give them different rates."""
        ties = {}
        for group in groups:
            if group.tie is not None:
                ties.setdefault(group.tie, []).append(group)
        for tied in ties.values():
            given = {
                _name(g.producers[0], wrappers): self.value_for(g, wrappers, "default")
                for g in tied
            }
            if len(set(given.values())) > 1:
                key = tied[0].tie.key  # a hub_units.Tie
                raise ValueError(
                    f"per_layer gives the blocks of one KerasHub Backbone different values "
                    f"({given}), but they share one {key}, so each loses as many units. "
                    f"Give all of them one value, or none. Received: per_layer={self.per_layer!r}"
                )

    def _apply(self, group, pruned, wrappers, masks, unit_masks):
        if not len(pruned):
            return
        for part in group.masked:
            mask = masks[id(part.variable)]
            mask[part.index(mask, pruned)] = 0
        for producer in group.producers:
            _zero_units(unit_masks, wrappers[id(producer)], pruned)
        if group.masks_consumers:
            for consumer in group.consumers:
                key = id(consumer.layer.kernel)
                if key in masks:  # a consumer that is pruned too
                    rows = [row for c in pruned for row in consumer.rows(c)]
                    masks[key][rows] = 0
        for follower, offset in group.followers:
            wrapper = wrappers.get(id(follower))
            if wrapper is None:
                continue
            channels = [offset + c for c in pruned]
            kernel = getattr(follower, "kernel", None)
            if id(kernel) in masks:  # a depthwise convolution
                mask = masks[id(kernel)]
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


def _unit_groups(model):
    """The channel groups of `model`; of a KerasHub model, its feed-forward units only.

    Every other width of a KerasHub model (a pooler's, a classifier head's) is
    `hidden_dim` or another number its config fixes, so units pruned there
    could never be removed.
    """
    blocks = feed_forward_groups(model)
    if any(group.tie is not None for group in blocks):
        return blocks
    return channel_groups(model) + blocks


def _name(layer, wrappers):
    """The name criteria know `layer` by: its wrapper's `target_name` (a path, in place)."""
    wrapper = wrappers.get(id(layer))
    return layer.name if wrapper is None else wrapper.target_name


def _zero_units(unit_masks, wrapper, units):
    """Zeroes `units` in the new unit mask of `wrapper`, starting from its current one."""
    if wrapper.unit_mask is None:
        return
    name = wrapper.target_name
    if name not in unit_masks:
        unit_masks[name] = _read(wrapper.unit_mask).copy()
    unit_masks[name][units] = 0
