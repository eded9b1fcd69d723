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

The heads of `MultiHeadAttention` and the key/value groups of
`GroupQueryAttention` are units too (a `heads.HeadGroup`): a unit spans slices
of several weights, along each weight's own axis (`channels.UnitSlice`). A
pruned head's query, key, value and output-projection slices are masked, so it
adds exactly zero. Both kinds of group answer the same questions (`incoming`,
`masked`, `readers()`), and the criteria below ask nothing else.

The transformer blocks of a KerasHub model are nodes that the graph analysis
cannot see into; their feed-forward units are its groups (`hub_units`), the
same number pruned in every block of a Backbone, and so are the key/value
groups of their attention where the config sets the size of a head (Gemma).
"""

import keras
import numpy as np

from tf_lottery.calibration import calibration_batches
from tf_lottery.calibration import collect
from tf_lottery.calibration import kernel_layout
from tf_lottery.calibration import to_matrix
from tf_lottery.criteria import _check_quality
from tf_lottery.criteria import _read
from tf_lottery.selection import count_to_drop
from tf_lottery.structured.unit_criterion import UnitCriterion
from tf_lottery.structured.unit_criterion import norm_scores
from tf_lottery.validators import check_choice
from tf_lottery.validators import check_int


@keras.saving.register_keras_serializable(package="tf_lottery")
class UnitNorm(UnitCriterion):
    """Prunes the output units with the smallest weight norm (Li et al. 2017).

    The score of a unit (a Dense neuron, a convolution filter) is the L1 or L2
    norm of its incoming weights, its kernel column; units joined by a residual
    `Add` are scored by the sum of their norms, each divided by its layer's mean.
    An attention head scores by its query, key and value slices alike.

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
        return norm_scores(group, self.p)

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

    prunes_heads = False  # attention heads have no BatchNormalization

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

    by_rate = False  # s says how many go

    def __init__(self, quality=0.5, per_layer=None, round_to=1):
        super().__init__(per_layer=per_layer, round_to=round_to)
        self.quality = _check_quality(quality, "quality")

    def check_value(self, value, argument):
        return _check_quality(value, argument)

    def unit_scores(self, group, wrappers):
        return norm_scores(group, 2)

    def prune_count(self, group, wrappers, scores, alive):
        s = self.value_for(group, wrappers, self.quality)
        below, survivors = 0, 0
        masks = {
            id(m.variable): m.mask for p in group.producers for m in wrappers[id(p)].masked_weights
        }
        for part in group.incoming:
            kernel = part.per_unit(_read(part.variable), group.size)
            mask = part.per_unit(_read(masks[id(part.variable)]), group.size)
            alive_weights = kernel[(mask > 0) & alive[:, None]]
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


@keras.saving.register_keras_serializable(package="tf_lottery")
class UnitActivation(UnitCriterion):
    """Prunes the units whose output the next layer uses least on calibration data.

    Wanda's score (Sun et al. 2023) for whole units, the activation importance
    of Minitron (Muralidharan et al. 2024): a unit scores ‖X_j‖₂ · ‖W[j, :]‖₂,
    where W is the kernel of the layer that reads the unit and ‖X_j‖₂ the norm
    of that layer's input feature j over the calibration data. A feed-forward
    neuron scores by the down-projection's input j and row j; an attention
    head sums this over its rows of the output projection (all the query heads
    of a key/value group under grouped-query attention). A unit whose output
    is large where its weights are small is kept, where `UnitNorm`, which reads
    the weights only, would prune it.

    The readers' inputs are captured in one pass over the calibration
    batches, with the layers' `call` hooked as `Wanda` does: each batch is
    folded into one norm per feature and dropped. The layers that read a
    pruned group's units must be Dense layers (or attention output
    projections).

    Args:
        rate: Fraction of surviving units to prune per round. Defaults to `0.2`.
        data: Calibration inputs: arrays (or a dict or list of them, as
            `model.predict` takes), an `(x, y)` or `(x, y, sample_weight)`
            tuple, or a dataset of such batches. Required.
        scope: `"layer"` or `"global"`. Defaults to `"layer"`.
        per_layer: Optional dict from layer name to rate. Defaults to `None`.
        round_to: Keep unit counts a multiple of this. Defaults to `1`.
        samples: Calibration examples to use, at most. Defaults to `128`.
        batch_size: Examples per forward pass, for arrays. Defaults to `8`.

    Example:

    ```python
    model = tf_lottery.wrap(model, exclude=["embedding", "lm_head"])
    tf_lottery.prune(model, tf_lottery.UnitActivation(0.25, data=token_ids[:128]))
    small = tf_lottery.shrink(model)
    ```
    """

    def __init__(
        self,
        rate=0.2,
        data=None,
        *,
        scope="layer",
        per_layer=None,
        round_to=1,
        samples=128,
        batch_size=8,
    ):
        super().__init__(rate, scope, per_layer, round_to)
        if data is None:
            raise ValueError(
                "UnitActivation scores units by the inputs of the layers that read them "
                "on calibration data: pass data=x (model inputs, e.g. 128 sequences of "
                "token ids) or a dataset of batches. Received: data=None"
            )
        self.data = data
        self.samples = check_int(samples, "samples", minimum=1)
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)

    def scorer(self, groups, model, wrappers):
        readers = {}
        for group in groups:
            for layer, _ in group.readers():
                if not isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)):
                    raise ValueError(
                        f"UnitActivation scores the units of '{group.name}' by the inputs of "
                        f"the layers that read them, which must be Dense layers, but layer "
                        f"'{layer.name}' ({type(layer).__name__}) reads them. Prune them with "
                        "UnitNorm, or leave them out: tf_lottery.prune(model, criterion, "
                        "layers=[...])."
                    )
                readers[id(layer)] = layer
        layers = list(readers.values())
        if not layers:
            return lambda group: np.zeros(group.size)  # nothing reads them: no pass
        batches = calibration_batches(self.data, self.samples, self.batch_size, "UnitActivation")
        statistics = collect(model, batches, layers, gram=False)
        # Per reader: ‖X_j‖₂ · ‖W[j, :]‖₂ of every input row j of its kernel matrix.
        contributions = {
            id(layer): np.sqrt(stats.squared_norms)
            * np.linalg.norm(to_matrix(_read(layer.kernel), kernel_layout(layer)), axis=1)
            for layer, stats in zip(layers, statistics)
        }

        def score(group):
            total = np.zeros(group.size)
            for layer, rows in group.readers():
                row_scores = contributions[id(layer)]
                total += [row_scores[list(rows(unit))].sum() for unit in range(group.size)]
            return total

        return score

    def get_config(self):
        # The calibration data is not part of the config, as with Wanda's.
        return {**super().get_config(), "samples": self.samples, "batch_size": self.batch_size}
