"""`PruneFraction` and its control `RandomPrune`: prune a fraction of the survivors.

Frankle & Carbin's rule, per layer, across all layers at once (`scope="global"`)
or spread by Erdős–Rényi-kernel scaling, in rounds or to a schedule's target.
The scores are magnitude, random ones (`RandomPrune`), or a scorer's
(`scorer=tf_lottery.SNIP(...)`), and `tf_lottery.selection` picks the units.
"""

import dataclasses

import keras
import numpy as np

from tf_lottery.criteria import Criterion
from tf_lottery.criteria import _check_rate
from tf_lottery.criteria import _read
from tf_lottery.criteria import _with_sparsity
from tf_lottery.init_criteria import InitCriterion
from tf_lottery.selection import count_to_drop
from tf_lottery.selection import drop_smallest
from tf_lottery.selection import drop_smallest_across
from tf_lottery.selection import erk_sparsities
from tf_lottery.selection import reduce_blocks
from tf_lottery.selection import round_target
from tf_lottery.validators import check_choice
from tf_lottery.validators import check_fraction
from tf_lottery.validators import check_instance
from tf_lottery.validators import check_int
from tf_lottery.validators import check_per_layer


def _check_scorer(scorer):
    if scorer is None:
        return None
    return check_instance(
        scorer,
        "scorer",
        InitCriterion,
        "None or a criterion of pruning at initialization whose scores rank the weights, "
        "e.g. tf_lottery.SNIP(data=(x, y))",
    )


def _pooled(scores, block, pooling):
    """A scorer's scores per unit: as they are, or the mean (or max) of each block."""
    scores = np.asarray(scores, dtype=np.float64)
    if block == (1, 1):
        return scores
    if pooling == "max":
        # Padding must never win: the smallest score stands in for it.
        return reduce_blocks(scores - scores.min(), block, np.max) + scores.min()
    sums = reduce_blocks(scores, block, np.sum)
    counts = reduce_blocks(np.ones_like(scores), block, np.sum)
    return sums / counts


def _mean_survivor(scores, alive):
    """The mean score of a tensor's surviving units (1 where none survive or all score 0)."""
    mean = float(np.mean(scores[alive], dtype=np.float64)) if alive.any() else 0.0
    return mean if mean > 0 else 1.0


@keras.saving.register_keras_serializable(package="tf_lottery")
class PruneFraction(Criterion):
    """Frankle & Carbin's rule: prune a fraction of the surviving weights.

    Each round removes `rate` of the weights that still survive, those of
    smallest magnitude, per layer or (`scope="global"`) across all layers at once.
    As in the Lottery Ticket paper, the output layer is pruned at half the rate
    (fully-connected layers 20% and the output layer 10% per round) unless
    `output_rate` or `per_layer` says otherwise. The output layer is the model's
    last prunable layer.

    It also prunes to a target sparsity, which is what the schedules of
    `GradualPruning` (`ConstantSparsity`, `PolynomialDecay`) ask for: then
    `rate`, `per_layer` and `output_rate` do not apply, and `scope` says how the
    target is spread over the layers: the same in each (`"layer"`, as tfmot
    does), one ranking of all weights (`"global"`), or Erdős–Rényi-kernel
    scaling (`"erk"`, Evci et al. 2020: small layers stay denser). In rounds,
    `scope="erk"` makes the round's overall target `1 - (1 - s)(1 - rate)` from
    the current sparsity s, spread by ERK. A target counts units: with blocks,
    the fraction of blocks, as tfmot counts them.

    Args:
        rate: Fraction of the surviving weights to prune per round, in (0, 1).
            Defaults to `0.2`.
        scope: `"layer"` (each tensor loses `rate` of its weights), `"global"`
            (the smallest `rate` of all surviving weights, wherever they are) or
            `"erk"`. Defaults to `"layer"`.
        per_layer: Optional dict from layer name to its own rate. Only with
            `scope="layer"`. Defaults to `None`.
        block: Block shape, see `Criterion`. Defaults to `(1, 1)`.
        output_rate: Rate of the output layer; `None` means `rate / 2`. Only
            with `scope="layer"`. Defaults to `None`.
        block_pooling: `"avg"` or `"max"`, see `Criterion`. Defaults to `"avg"`.
        normalize: How each tensor's scores are scaled before the global
            ranking: `None`, raw magnitude, as in Frankle & Carbin, where a layer
            of large weights keeps more of them; or `"mean"`, each score divided
            by the mean score of its tensor's survivors, as the unit criteria
            rank units across layers, so that a layer's scale does not decide
            how much of it goes. Only with `scope="global"`. Defaults to `None`.
        scorer: Scores to rank by instead of magnitude: a criterion of pruning
            at initialization (`tf_lottery.SNIP`, `GraSP`, `SynFlow`, or an
            `InitCriterion` of your own), whose `scores(model, targets, masks)`
            are then selected as this criterion selects (per layer, global, ERK,
            a schedule's target), larger kept. Its own `sparsity` is not used,
            and `SynFlow` gives its one-shot scores. `tf_lottery.prune` then
            needs the model, as it has. Defaults to `None`: magnitude.

    Example:

    ```python
    criterion = tf_lottery.PruneFraction(0.2)              # 20% per round, 10% output
    global_criterion = tf_lottery.PruneFraction(0.2, scope="global")
    scale_free = tf_lottery.PruneFraction(0.2, scope="global", normalize="mean")
    # SNIP's saliency |g * w| on a batch, 50% of each layer pruned by it.
    snip_per_layer = tf_lottery.PruneFraction(
        0.5, output_rate=0.5, scorer=tf_lottery.SNIP(data=(x[:256], y[:256])))
    # With a schedule: every layer to 80% sparsity by step 2000.
    pruning = tf_lottery.GradualPruning(
        tf_lottery.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=2000),
        tf_lottery.PruneFraction(scope="layer"))
    ```
    """

    accepts_target = True

    def __init__(
        self,
        rate=0.2,
        scope="layer",
        per_layer=None,
        block=(1, 1),
        output_rate=None,
        block_pooling="avg",
        normalize=None,
        scorer=None,
    ):
        super().__init__(block, block_pooling)
        self.scorer = _check_scorer(scorer)
        self.rate = _check_rate(rate, "rate")
        self.scope = check_choice(scope, "scope", ("layer", "global", "erk"))
        self.normalize = check_choice(
            normalize, "normalize", (None, "mean"), meaning="how scores are scaled per tensor"
        )
        if normalize is not None and scope != "global":
            raise ValueError(
                "normalize scales each tensor's scores for a ranking across tensors, which "
                f"only scope='global' makes; with scope={scope!r} each tensor is ranked on its "
                f"own. Use scope='global', or leave normalize out. Received: scope={scope!r}, "
                f"normalize={normalize!r}"
            )
        self.per_layer = check_per_layer(per_layer, "per_layer", _check_rate)
        self.output_rate = None if output_rate is None else _check_rate(output_rate, "output_rate")
        for argument, given in (
            ("per_layer", self.per_layer or None),
            ("output_rate", output_rate),
        ):
            if scope != "layer" and given is not None:
                raise ValueError(
                    f"{argument} only applies with scope='layer': scope={scope!r} spreads one "
                    "rate over all layers, the output layer included. Use scope='layer', or "
                    f"leave {argument} out. Received: scope={scope!r}, {argument}={given!r}"
                )

    def check_target(self):
        if self.per_layer or self.output_rate is not None:
            raise ValueError(
                "per_layer and output_rate set the rates of rounds; a target sparsity from a "
                "schedule applies to every layer, spread by scope ('layer', 'global' or "
                f"'erk'). Received: per_layer={self.per_layer!r}, "
                f"output_rate={self.output_rate!r}"
            )

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
        alive = int(target.alive.sum())
        rate = self.rate_for(target)
        count = count_to_drop(alive, target.alive.size, rate, target.sparsity)
        return drop_smallest(self.scores(target, (self._draw_seed(),)), target.alive, count)

    @property
    def uses_model(self):
        """Whether scores come from the model (a `scorer`), so that `prune` passes it."""
        return self.scorer is not None

    def compute_target_masks(self, targets, sparsity, model=None):
        if self.scope != "layer" and isinstance(sparsity, (dict, list, tuple)):
            raise ValueError(
                f"scope={self.scope!r} spreads one overall target over the layers; per-layer "
                f"targets need scope='layer'. Received: sparsity={sparsity!r}"
            )
        if self.scope == "erk":
            check_fraction(sparsity, "sparsity", allow_zero=True)
            sparsity = erk_sparsities([t.weight.shape for t in targets], sparsity)
        yield from super().compute_target_masks(targets, sparsity, model=model)

    def compute_masks(self, targets, model=None):
        if self.scorer is None:
            yield from self._masks(targets)
            return
        if model is None:
            raise ValueError(
                f"{self!r} ranks by its scorer's scores, which come from the whole model: "
                "call tf_lottery.prune(model, criterion), not criterion.compute_masks(targets)."
            )
        self.check(targets)
        masks = [_read(t.mask) for t in targets]
        scores = self.scorer.checked_scores(model, targets, masks)
        # Each target carries its scorer's scores per weight; `_with_units` pools them.
        yield from self._masks([dataclasses.replace(t, scores=s) for t, s in zip(targets, scores)])

    def _with_units(self, target):
        unit = super()._with_units(target)
        if self.scorer is None:
            return unit
        return dataclasses.replace(
            unit, scores=_pooled(target.scores, unit.block, self.block_pooling)
        )

    def _masks(self, targets):
        if self.scope == "erk" and targets and targets[0].sparsity is None:
            alive, units = 0, 0
            for target in targets:  # one tensor at a time
                unit = self._with_units(target)
                alive, units = alive + int(unit.alive.sum()), units + unit.alive.size
            sparsity = round_target(alive, units, self.rate)
            shapes = [t.weight.shape for t in targets]
            yield from self._masks(_with_sparsity(targets, erk_sparsities(shapes, sparsity)))
            return
        if self.scope != "global":
            yield from super().compute_masks(targets)
            return
        # Global scope: local selection over the concatenated scores, read in
        # two passes that each hold one tensor plus the surviving scores.
        self.check(targets)
        seed = self._draw_seed()

        def parts():
            for index, target in enumerate(targets):
                unit = self._with_units(target)
                scores, scale = self.scores(unit, (seed, index)), 1.0
                if self.normalize == "mean":
                    scale = _mean_survivor(scores, unit.alive)
                    scores = scores / scale
                yield (unit, scale), scores, unit.alive

        sparsity = targets[0].sparsity if targets else None

        def count(alive, units):
            return count_to_drop(alive, units, self.rate, sparsity)

        for (unit, scale), keep, cut in drop_smallest_across(parts, count):
            yield self._finish(unit, keep, cut * scale)  # the cut in this tensor's own units

    def get_config(self):
        config = {
            "rate": self.rate,
            "scope": self.scope,
            "per_layer": dict(self.per_layer),
            **super().get_config(),
            "output_rate": self.output_rate,
        }
        if self.normalize is not None:
            # Left out at its default, so that the settings of lottery runs
            # written before the option existed still match.
            config["normalize"] = self.normalize
        if self.scorer is not None:  # what it is; its data is not part of a config
            config["scorer"] = {"class": type(self.scorer).__name__, **self.scorer.get_config()}
        return config

    @classmethod
    def from_config(cls, config):
        if config.get("scorer") is not None:
            raise ValueError(
                f"{cls.__name__}'s config names its scorer ({config['scorer']}), but a scorer "
                "holds its data, which no config keeps: build the criterion again with "
                "scorer=..."
            )
        return super().from_config(config)


@keras.saving.register_keras_serializable(package="tf_lottery")
class RandomPrune(PruneFraction):
    """A control: prunes surviving weights at random, as many as `PruneFraction`.

    Same per-layer counts (and the same halved output-layer rate) as
    `PruneFraction` with the same arguments, but which weights go is random:
    the control of the Lottery Ticket paper that shows magnitude matters.

    Args:
        rate: Fraction of surviving weights to prune per round. Defaults to `0.2`.
        scope: `"layer"`, `"global"` or `"erk"`, as in `PruneFraction`. Defaults
            to `"layer"`.
        per_layer: Optional dict from layer name to rate. Only with
            `scope="layer"`. Defaults to `None`.
        block: Block shape, see `Criterion`. Defaults to `(1, 1)`.
        output_rate: Rate of the output layer; `None` means `rate / 2`. Only
            with `scope="layer"`. Defaults to `None`.
        seed: Integer seed. `None` draws from numpy's global generator, which
            `keras.utils.set_random_seed` seeds. Defaults to `None`.

    Example:

    ```python
    control = tf_lottery.RandomPrune(0.2, seed=1)
    ```
    """

    def __init__(
        self,
        rate=0.2,
        scope="layer",
        per_layer=None,
        block=(1, 1),
        output_rate=None,
        seed=None,
    ):
        super().__init__(rate, scope, per_layer, block, output_rate)
        self.seed = check_int(seed, "seed", allow_none=True)
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
