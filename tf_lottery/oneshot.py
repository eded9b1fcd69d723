"""One-shot pruning from calibration data: Wanda and SparseGPT.

Language models are pruned without retraining. Wanda (Sun et al. 2023) scores
every weight by |W_ij| · ‖X_j‖₂, the norm of its input feature over a few
calibration batches, and prunes each output's smallest. SparseGPT (Frantar &
Alistarh 2023) chooses the mask with the inverse Hessian of the layer's inputs
(XᵀX) and updates the surviving weights to make up for the pruned ones (OBS).

Both go layer by layer, as their reference code goes block by block: the
inputs of a layer come from the layers before it, already pruned. Here a group
is one `PruneWrapper` (a Dense layer, or a MultiHeadAttention with its query,
key, value and output kernels captured in one pass, as the references capture
a decoder block), in model order. For each group the model runs over the
calibration batches with the group's layers hooked; each batch is folded into
the group's statistics and dropped. Then the group is pruned and the next
group's pass sees its pruned outputs.

The conventions are the references' (locuslab/wanda `lib/prune.py`,
IST-DASLab/sparsegpt `sparsegpt.py`), checked in tests/test_oneshot.py against
a transcription of their code:

- Wanda prunes `floor(inputs · sparsity)` weights of every output, the first of
  a stable ascending sort of the scores.
- SparseGPT dampens the Hessian by 1% of its mean diagonal, works in blocks of
  128 inputs, and picks each block's mask from w² / [H⁻¹]²_jj over the whole
  block: the weights at or below the score of index `floor(size · sparsity)`
  of the block's sorted scores. An input that is zero on all calibration data
  (a dead column) gets a unit diagonal and its weights are set to zero.
- N:M prunes the `m - n` smallest of every `m` consecutive inputs of each
  output (the references' `prune_n` is the count pruned; 2:4 and 4:8 are the
  same either way). A shorter last group keeps at most `n`.
- No weight of a tensor is kept for its own sake (no keep-at-least-one).

Where tf_lottery adds to them: weights already pruned count towards the target
and stay pruned, and calibration positions can be weighted (padding).

Computations run on the host in float64 with numpy, like the other criteria;
the per-batch Gram matrix is computed on the device in float32.
"""

import math

import keras
import numpy as np

from tf_lottery import calibration
from tf_lottery.criteria import Criterion
from tf_lottery.criteria import _read
from tf_lottery.validators import check_fraction
from tf_lottery.validators import check_int
from tf_lottery.validators import check_number
from tf_lottery.wrapper import find_wrappers


def _check_n_m(n_m):
    if n_m is None:
        return None
    if (
        not isinstance(n_m, (tuple, list))
        or len(n_m) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in n_m)
        or not 0 < n_m[0] < n_m[1]
    ):
        raise ValueError(
            "Expected n_m to be None or a pair (n, m) of integers with 0 < n < m: keep n "
            f"of every m consecutive inputs, e.g. (2, 4). Received: n_m={n_m!r}"
        )
    return tuple(n_m)


def _nm_pruned(scores, n, m):
    """Pruned-flags that drop the `m - n` lowest scores of every `m` consecutive columns.

    Ties go to the earlier column (a stable sort). A last group of `g < m`
    columns drops `max(0, g - n)`.
    """
    rows, columns = scores.shape
    pad = -columns % m
    groups = np.pad(scores, ((0, 0), (0, pad)), constant_values=np.inf).reshape(rows, -1, m)
    rank = np.argsort(np.argsort(groups, axis=-1, kind="stable"), axis=-1, kind="stable")
    sizes = np.full(groups.shape[1], m)
    sizes[-1] = m - pad
    pruned = rank < np.maximum(sizes - n, 0)[None, :, None]
    return pruned.reshape(rows, -1)[:, :columns]


def wanda_pruned(weight, squared_norms, sparsity, n_m=None, alive=None):
    """Wanda's choice for one weight matrix: which weights to prune.

    Args:
        weight: (outputs, inputs) array, the references' layout (a Keras
            kernel matrix transposed).
        squared_norms: (inputs,) array, ‖X_j‖² of every input feature over
            the calibration data (any common scale).
        sparsity: Fraction of each output's weights to prune.
        n_m: `(n, m)` to keep n of every m consecutive inputs instead.
        alive: Boolean array like `weight`, False for weights already pruned;
            they are pruned first and count. `None`: all alive.

    Returns:
        A boolean array like `weight`, True where pruned.
    """
    scores = np.abs(weight) * np.sqrt(squared_norms)[None, :]
    if alive is not None:
        scores = np.where(alive, scores, -np.inf)
    if n_m is not None:
        return _nm_pruned(scores, *n_m)
    count = int(weight.shape[1] * sparsity)
    order = np.argsort(scores, axis=1, kind="stable")[:, :count]
    pruned = np.zeros(weight.shape, bool)
    np.put_along_axis(pruned, order, True, axis=1)
    return pruned


def sparsegpt_pruned(weight, hessian, sparsity, n_m=None, alive=None, blocksize=128, percdamp=0.01):
    """SparseGPT's choice and update for one weight matrix.

    Args:
        weight: (outputs, inputs) array, the references' layout.
        hessian: (inputs, inputs) array, XᵀX over the calibration data. Its
            scale matters only where an input is dead (zero diagonal), which
            gets a diagonal of 1: the reference scales XᵀX by 2 / sequences.
        sparsity: Fraction of each block's weights to prune (unstructured).
        n_m: `(n, m)` to keep n of every m consecutive inputs instead.
        alive: As in `wanda_pruned`.
        blocksize: Inputs per block of the lazy update. Defaults to `128`.
        percdamp: Dampening, as a fraction of the mean diagonal of the
            Hessian. Defaults to `0.01`.

    Returns:
        `(pruned, weight)`: a boolean array, True where pruned, and the
        updated float64 weights, zero where pruned.

    Raises:
        numpy.linalg.LinAlgError: If the dampened Hessian is not positive
            definite.
    """
    w = np.array(weight, np.float64)
    h = np.array(hessian, np.float64)
    columns = w.shape[1]
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h[np.diag_indices(columns)] += percdamp * np.mean(np.diag(h))
    # The upper Cholesky factor of H⁻¹, as the reference computes it.
    lower_inverse = np.linalg.inv(np.linalg.cholesky(h))
    hinv = np.linalg.cholesky(lower_inverse.T @ lower_inverse).T
    dead_weights = np.zeros(w.shape, bool) if alive is None else ~alive
    pruned = np.zeros(w.shape, bool)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        w1 = w[:, i1:i2].copy()
        q1 = np.zeros_like(w1)
        err1 = np.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        diagonal = np.diag(hinv1)
        if n_m is None:
            scores = np.where(dead_weights[:, i1:i2], -np.inf, w1**2 / diagonal[None, :] ** 2)
            cut = np.sort(scores.ravel())[int(scores.size * sparsity)]
            mask1 = scores <= cut
        else:
            mask1 = np.zeros(w1.shape, bool)
        for i in range(i2 - i1):
            if n_m is not None and i % n_m[1] == 0:
                part = slice(i, i + n_m[1])
                scores = np.where(
                    dead_weights[:, i1:i2][:, part],
                    -np.inf,
                    w1[:, part] ** 2 / diagonal[None, part] ** 2,
                )
                mask1[:, part] = _nm_pruned(scores, *n_m) | dead_weights[:, i1:i2][:, part]
            column = w1[:, i]
            q = np.where(mask1[:, i], 0.0, column)
            q1[:, i] = q
            err = (column - q) / hinv1[i, i]
            w1[:, i:] -= np.outer(err, hinv1[i, i:])
            err1[:, i] = err
        w[:, i1:i2] = q1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
        pruned[:, i1:i2] = mask1
    return pruned, w


class OneShotCriterion(Criterion):
    """Base class of the criteria that prune once from calibration data.

    A subclass sets `gram` (whether it needs XᵀX or only the squared feature
    norms) and implements `prune_matrix`. The base class finds the Dense and
    EinsumDense kernels of the targets, runs the calibration passes group by
    group, and yields each tensor's mask (and, where `prune_matrix` returns
    them, its new weights) for `tf_lottery.prune` to apply before the next
    group is calibrated.

    Args:
        sparsity: Fraction of each tensor's weights to have pruned, in [0, 1)
            (weights pruned before count). Ignored with `n_m`. Defaults to `0.5`.
        data: Calibration inputs: arrays (or a dict or list of them, as
            `model.predict` takes), an `(x, y)` or `(x, y, sample_weight)`
            tuple, or a dataset of such batches. Required.
        n_m: `(n, m)`: keep `n` of every `m` consecutive inputs of each output
            instead, e.g. `(2, 4)`. Defaults to `None`.
        samples: Calibration examples to use, at most. Defaults to `128`, as
            in both papers.
        batch_size: Examples per forward pass, for arrays. Defaults to `8`.
    """

    uses_model = True
    gram = False

    def __init__(self, sparsity=0.5, data=None, *, n_m=None, samples=128, batch_size=8):
        super().__init__()
        self.sparsity = check_fraction(
            sparsity, "sparsity", allow_zero=True, meaning="the fraction of weights to prune"
        )
        if data is None:
            raise ValueError(
                f"{type(self).__name__} scores weights with the inputs each layer sees on "
                "calibration data: pass data=x (model inputs, e.g. 128 sequences of token "
                "ids) or a dataset of batches. Received: data=None"
            )
        self.data = data
        self.n_m = _check_n_m(n_m)
        self.samples = check_int(samples, "samples", minimum=1)
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)

    def prune_matrix(self, weight, statistics, alive):
        """The choice for one weight matrix.

        Args:
            weight: (outputs, inputs) float64 array (the kernel matrix transposed).
            statistics: The layer's `calibration.InputStatistics`.
            alive: Boolean array like `weight`, False where already pruned.

        Returns:
            A boolean array like `weight`, True where pruned, or a pair of it
            and the new weights.
        """
        raise NotImplementedError

    def _layers(self, model, targets):
        """(wrapper, kernel owner) per target; a ValueError before anything changes."""
        owners = {}
        for wrapper in find_wrappers(model):
            for masked in wrapper.masked_weights:
                owners[id(masked.variable)] = (
                    wrapper,
                    calibration.kernel_owner(wrapper, masked.variable),
                )
        unknown = sorted(
            f"{t.layer}/{t.name} ({t.layer_type})"
            for t in targets
            if owners.get(id(t.weight), (None, None))[1] is None
        )
        if unknown:
            raise ValueError(
                f"{type(self).__name__} prunes the kernels of Dense and EinsumDense layers "
                f"(MultiHeadAttention's included), from the inputs they see; it cannot prune "
                f"{unknown}. Leave them out: tf_lottery.prune(model, criterion, layers=[...]) "
                "or tf_lottery.wrap(model, exclude=[...]). The papers leave the embeddings "
                "and the language-model head dense."
            )
        for target in targets:
            calibration.kernel_layout(owners[id(target.weight)][1])
        return [owners[id(t.weight)] for t in targets]

    def compute_masks(self, targets, model=None):
        if model is None:
            raise ValueError(
                f"{type(self).__name__} calibrates on the model's layer inputs: call "
                "tf_lottery.prune(model, criterion), not criterion.compute_masks(targets)."
            )
        self.check(targets)
        owners = self._layers(model, targets)
        batches = calibration.calibration_batches(
            self.data, self.samples, self.batch_size, type(self).__name__
        )
        self._check_called(model, batches[0], targets, [layer for _, layer in owners])
        start = 0
        while start < len(targets):
            group = owners[start][0]
            end = start
            while end < len(targets) and owners[end][0] is group:
                end += 1
            layers = [layer for _, layer in owners[start:end]]
            yield from self._prune_group(model, batches, targets[start:end], layers)
            start = end

    def _check_called(self, model, batch, targets, layers):
        """A ValueError, before anything changes, if the forward pass skips a layer."""
        statistics = calibration.collect(model, [batch], layers, gram=False)
        skipped = sorted(
            {f"{t.layer}/{t.name}" for t, s in zip(targets, statistics) if not s.examples}
        )
        if skipped:
            raise ValueError(
                f"{type(self).__name__} calibrates each layer on the inputs it sees, but the "
                f"model's forward pass does not call {skipped}. Prune only the layers the "
                "model uses: tf_lottery.prune(model, criterion, layers=[...])."
            )

    def _prune_group(self, model, batches, targets, layers):
        # A generator of its own, so that the group's statistics are freed when
        # it ends, before the next group's pass.
        statistics = calibration.collect(model, batches, layers, self.gram)
        for target, layer, stats in zip(targets, layers, statistics):
            yield self._prune_target(target, layer, stats)

    def _prune_target(self, target, layer, statistics):
        if statistics.rows == 0:
            raise ValueError(
                f"{type(self).__name__}: layer '{layer.name}' ({target.layer}/{target.name}) "
                "saw no calibration input: every position is padding (weight 0)."
            )
        layout = calibration.kernel_layout(layer)
        kernel = _read(target.weight)
        mask = _read(target.mask)
        weight = calibration.to_matrix(kernel, layout).T.astype(np.float64)
        alive = calibration.to_matrix(mask, layout).T > 0
        result = self.prune_matrix(weight, statistics, alive)
        pruned, updated = result if isinstance(result, tuple) else (result, None)
        keep = calibration.from_matrix((~pruned & alive).T, layout, kernel.shape)
        new_mask = np.where(keep, mask, mask.dtype.type(0))
        if updated is None:
            return new_mask, math.nan
        values = calibration.from_matrix(updated.T, layout, kernel.shape).astype(kernel.dtype)
        return new_mask, math.nan, values

    def get_config(self):
        # The calibration data is not part of the config, as with SNIP's.
        return {
            "sparsity": self.sparsity,
            "n_m": None if self.n_m is None else list(self.n_m),
            "samples": self.samples,
            "batch_size": self.batch_size,
        }

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="tf_lottery")
class Wanda(OneShotCriterion):
    """Sun et al. 2023: prune by |W_ij| · ‖X_j‖₂, per output, without retraining.

    ‖X_j‖₂ is the norm of input feature j over the calibration data, as this
    layer sees it with the layers before it already pruned. Each output (a
    kernel column in Keras' [in, out] layout; for an EinsumDense kernel, each
    entry of its output axes) loses `floor(inputs · sparsity)` weights, those
    of lowest score. The weights that survive are not changed.

    Args:
        sparsity: Fraction of each output's weights to prune, in [0, 1).
            Ignored with `n_m`. Defaults to `0.5`.
        data: Calibration inputs, see `OneShotCriterion`. Required.
        n_m: `(n, m)`: keep `n` of every `m` consecutive inputs, e.g. `(2, 4)`.
            Defaults to `None`.
        samples: Calibration examples, at most. Defaults to `128`.
        batch_size: Examples per forward pass. Defaults to `8`.

    Example:

    ```python
    model = tf_lottery.wrap(model, exclude=["embedding", "lm_head"])
    tf_lottery.prune(model, tf_lottery.Wanda(0.5, data=token_ids[:128]))
    ```
    """

    def prune_matrix(self, weight, statistics, alive):
        return wanda_pruned(weight, statistics.squared_norms, self.sparsity, self.n_m, alive)


@keras.saving.register_keras_serializable(package="tf_lottery")
class SparseGPT(OneShotCriterion):
    """Frantar & Alistarh 2023: prune with the inverse Hessian, and update the survivors.

    For each layer, H = XᵀX over its calibration inputs (with the layers before
    it already pruned). Block by block over the inputs, the weights of lowest
    w² / [H⁻¹]²_jj are pruned and the error of each pruned column is spread
    over the columns not yet visited (optimal brain surgeon), so the survivors
    change: `tf_lottery.prune` writes them into the layer.

    Args:
        sparsity: Fraction of the weights to prune, in [0, 1), chosen per block
            of `blocksize` inputs over all outputs together. Ignored with `n_m`.
            Defaults to `0.5`.
        data: Calibration inputs, see `OneShotCriterion`. Required.
        n_m: `(n, m)`: keep `n` of every `m` consecutive inputs, e.g. `(2, 4)`.
            Defaults to `None`.
        samples: Calibration examples, at most. Defaults to `128`.
        batch_size: Examples per forward pass. Defaults to `8`.
        blocksize: Inputs per block. Defaults to `128`, as in the reference.
        percdamp: Dampening added to the Hessian's diagonal, as a fraction of
            its mean. Defaults to `0.01`, as in the reference.

    Example:

    ```python
    model = tf_lottery.wrap(model, exclude=["embedding", "lm_head"])
    tf_lottery.prune(model, tf_lottery.SparseGPT(data=token_ids[:128], n_m=(2, 4)))
    ```
    """

    gram = True

    def __init__(
        self,
        sparsity=0.5,
        data=None,
        *,
        n_m=None,
        samples=128,
        batch_size=8,
        blocksize=128,
        percdamp=0.01,
    ):
        super().__init__(sparsity, data, n_m=n_m, samples=samples, batch_size=batch_size)
        self.blocksize = check_int(blocksize, "blocksize", minimum=1)
        self.percdamp = check_number(
            percdamp, "percdamp", meaning="a fraction of the Hessian's mean diagonal"
        )
        if self.n_m is not None and self.blocksize % self.n_m[1]:
            raise ValueError(
                f"Expected blocksize to be a multiple of m, so that no group of m inputs "
                f"spans two blocks. Received: blocksize={blocksize}, n_m={n_m!r}"
            )

    def prune_matrix(self, weight, statistics, alive):
        try:
            return sparsegpt_pruned(
                weight,
                statistics.hessian,
                self.sparsity,
                self.n_m,
                alive,
                self.blocksize,
                self.percdamp,
            )
        except np.linalg.LinAlgError as error:
            raise ValueError(
                f"SparseGPT could not invert the Hessian of a layer's inputs ({error}): give "
                "more calibration data (samples=...), or a larger percdamp. Received: "
                f"percdamp={self.percdamp}"
            ) from error

    def get_config(self):
        return {**super().get_config(), "blocksize": self.blocksize, "percdamp": self.percdamp}
