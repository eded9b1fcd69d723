"""Pruning at initialization: criteria that score weights from the whole model.

SNIP (Lee et al. 2019) keeps the weights whose removal would change the loss
most, |g ⊙ w| with g the loss gradient on a few batches of data. SynFlow
(Tanaka et al. 2020) needs no data: it scores |θ ⊙ ∂R/∂θ| with R the summed
output of the network with every weight replaced by its magnitude and an input
of ones, and prunes in many small steps so that no layer is cut off. GraSP
(Wang et al. 2020) removes the weights whose removal reduces the gradient flow
least, those of highest -θ ⊙ Hg (H the loss Hessian).

They extend `Criterion` in its one documented way for criteria that need more
than one tensor at a time: `uses_model = True`, so that `tf_lottery.prune` calls
`compute_masks(targets, model=model)`; the data they need is given to their
constructor. All rank every surviving weight of the targets together and keep
the best `1 - sparsity` of all the targets' weights: the per-layer allocation
is theirs. In `find_winning_ticket` they are controls: each round prunes θ0 once
to the ticket's overall sparsity of that round and trains it.

Gradients come from `tf_lottery.gradients`, one small function per backend.
"""

import copy
import math

import keras
import numpy as np

from tf_lottery.criteria import Criterion
from tf_lottery.criteria import _read
from tf_lottery.gradients import gradients
from tf_lottery.gradients import hessian_vector_product
from tf_lottery.selection import keep_best_across
from tf_lottery.validators import check_fraction
from tf_lottery.validators import check_int
from tf_lottery.validators import check_number


def _check_sparsity(value):
    return check_fraction(
        value,
        "sparsity",
        allow_zero=True,
        meaning="the fraction of all the pruned layers' weights to have pruned",
    )


class InitCriterion(Criterion):
    """Base class of the criteria that prune at initialization, from the model.

    A subclass implements `scores(model, targets, masks)`: one array per target,
    shaped like its weight, larger kept. The base class ranks the surviving
    weights of all targets together and keeps the best `1 - sparsity` of all
    their weights, never bringing back a pruned one. `SynFlow` overrides
    `select` to prune in several steps.

    This is the one way a criterion asks for more than one tensor: it sets
    `uses_model = True`, so that `tf_lottery.prune(model, criterion)` calls
    `compute_masks(targets, model=model)`, and takes any data it needs in its
    constructor. `compute_mask(target)` is not used.

    Args:
        sparsity: The fraction of the targets' weights that are pruned once it
            has run (weights pruned before count), in [0, 1). Defaults to `0.9`.
    """

    uses_model = True
    # The arm's name when the criterion is a control of `find_winning_ticket`.
    arm = None

    def __init__(self, sparsity=0.9):
        super().__init__()
        self.sparsity = _check_sparsity(sparsity)

    def with_sparsity(self, sparsity):
        """A copy of this criterion that prunes to another `sparsity`."""
        other = copy.copy(self)
        other._warned = set()
        other.sparsity = _check_sparsity(sparsity)
        return other

    def scores(self, model, targets, masks):
        """One score array per target, shaped like its weight; larger is kept.

        Args:
            model: The model the targets belong to.
            targets: The `PruneTarget`s.
            masks: The current masks, numpy arrays, one per target. A pruned
                weight's score is not used.
        """
        raise NotImplementedError

    def select(self, model, targets, masks, count):
        """Keep-flags, one boolean array per target: `count` weights survive in all."""
        alive = [m > 0 for m in masks]
        return keep_best_across(self.checked_scores(model, targets, masks), alive, count)

    def checked_scores(self, model, targets, masks):
        scores = [np.asarray(s, dtype=np.float64) for s in self.scores(model, targets, masks)]
        alive = [s[m > 0] for s, m in zip(scores, masks)]
        if any(not np.all(np.isfinite(a)) for a in alive):
            raise ValueError(
                f"{type(self).__name__} computed scores that are not finite (overflow in "
                "float32). Prune fewer or smaller layers together, or scale the model's inputs."
            )
        return scores

    def compute_masks(self, targets, model=None):
        if model is None:
            raise ValueError(
                f"{type(self).__name__} scores weights from the whole model: call "
                "tf_lottery.prune(model, criterion), not criterion.compute_masks(targets)."
            )
        self.check(targets)
        masks = [_read(t.mask) for t in targets]
        total = sum(m.size for m in masks)
        count = total - round(self.sparsity * total)
        keeps = self.select(model, targets, masks, count)
        for target, keep in zip(targets, keeps):
            yield self._finish(self._with_units(target), keep, math.nan)

    def get_config(self):
        return {"sparsity": self.sparsity}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _variable_index(model, targets):
    """The position of each target's weight in `model.trainable_variables`."""
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    missing = [f"{t.layer}/{t.name}" for t in targets if id(t.weight) not in index]
    if missing:
        raise ValueError(
            f"Weights {missing} are not trainable variables of the model, so they have no "
            "gradient. Prune only trainable layers (unfreeze them, or pass layers=...)."
        )
    return [index[id(t.weight)] for t in targets]


def _model_loss(model, loss, name):
    if loss is not None:
        return keras.losses.get(loss) if isinstance(loss, str) else loss
    given = getattr(model, "loss", None)
    if isinstance(given, str) or isinstance(given, keras.losses.Loss) or callable(given):
        return keras.losses.get(given) if isinstance(given, str) else given
    raise ValueError(
        f"{name} needs a loss: compile the model with one loss, or pass loss=... "
        f"(e.g. loss='sparse_categorical_crossentropy'). The model's loss is {given!r}."
    )


def _batches(data, batches, name):
    """`batches` (x, y) batches of `data`: equal parts of arrays, or a dataset's first ones.

    `x` may be one array or, for a model of several inputs (a KerasHub model's
    dict of `token_ids`, `padding_mask`, ...), a dict or list of arrays.
    """
    if isinstance(data, tuple):
        x, y = (keras.tree.map_structure(np.asarray, a) for a in data)
        parts = np.array_split(np.arange(len(y)), batches)
        return [(keras.tree.map_structure(lambda a, p=p: a[p], x), y[p]) for p in parts if p.size]
    taken = []
    for batch in data:
        taken.append((batch[0], batch[1]))
        if len(taken) == batches:
            break
    if not taken:
        raise ValueError(f"{name} found no batch in data={data!r}.")
    return taken


def _check_data(data, name):
    if data is None:
        raise ValueError(
            f"{name} scores weights by the loss gradient on data: pass data=(x, y) arrays "
            "or a dataset of (x, y) batches, e.g. a few hundred training examples. "
            "Received: data=None"
        )
    if isinstance(data, tuple) and len(data) != 2:
        raise ValueError(f"Expected data to be (x, y). Received: a tuple of {len(data)} items")
    if isinstance(data, (list, str, np.ndarray)):
        raise ValueError(
            f"Expected data to be (x, y) arrays or a dataset of (x, y) batches. "
            f"Received: data of type {type(data).__name__}"
        )
    return data


class _DataCriterion(InitCriterion):
    """The shared part of the criteria that need a loss on data (SNIP, GraSP)."""

    def __init__(self, sparsity=0.9, *, data=None, batches=1, loss=None):
        super().__init__(sparsity)
        self.data = _check_data(data, type(self).__name__)
        self.batches = check_int(batches, "batches", minimum=1)
        self.loss = loss

    def objectives(self, model, scale=1.0):
        """(inputs, objective) per batch: the mean loss of the outputs divided by `scale`."""
        loss = _model_loss(model, self.loss, type(self).__name__)

        def objective(y):
            y = keras.ops.convert_to_tensor(y)
            return lambda outputs: keras.ops.mean(loss(y, keras.ops.divide(outputs, scale)))

        return [
            (x, objective(y)) for x, y in _batches(self.data, self.batches, type(self).__name__)
        ]

    def mean_over_batches(self, compute, objectives):
        """The mean of `compute(inputs, objective)` (a list of arrays) over the batches."""
        total = None
        for x, objective in objectives:
            part = compute(x, objective)
            total = part if total is None else [t + p for t, p in zip(total, part)]
        return [t / len(objectives) for t in total]

    def get_config(self):
        loss = self.loss
        if loss is not None and not isinstance(loss, str):
            loss = keras.saving.serialize_keras_object(loss)
        return {**super().get_config(), "batches": self.batches, "loss": loss}


class SNIP(_DataCriterion):
    """Lee et al. 2019: keep the weights of largest connection sensitivity |g ⊙ w|.

    g is the gradient of the loss with respect to the weights, averaged over
    `batches` batches of `data`, with the model in training mode (batch
    statistics in BatchNormalization; nothing in the model changes). One shot:
    every surviving weight of every pruned layer is ranked together and the best
    `1 - sparsity` of all their weights are kept.

    Args:
        sparsity: Fraction of the pruned layers' weights to have pruned, in
            [0, 1). Defaults to `0.9`.
        data: `(x, y)` arrays, or a dataset of `(x, y)` batches. Required.
        batches: Arrays are cut into this many equal batches (to bound memory);
            from a dataset the first `batches` batches are used. Defaults to `1`.
        loss: The loss; `None` uses the one the model was compiled with.
            Defaults to `None`.

    Example:

    ```python
    tf_lottery.prune(model, tf_lottery.SNIP(0.9, data=(x_train[:600], y_train[:600])))
    ```
    """

    arm = "snip"

    def scores(self, model, targets, masks):
        grads = self.mean_over_batches(
            lambda x, objective: gradients(model, objective, x, training=True),
            self.objectives(model),
        )
        index = _variable_index(model, targets)
        return [np.abs(grads[i] * _read(t.weight)) for i, t in zip(index, targets)]


class GraSP(_DataCriterion):
    """Wang et al. 2020 (Gradient Signal Preservation): keep the weights that carry gradient flow.

    The score of a weight is -θ ⊙ Hg, with g the loss gradient and H the loss
    Hessian on `data` (logits divided by `temperature`, as in the paper's code);
    removing the weights of highest score reduces the gradient norm least, so
    the lowest scores are kept. One shot, all pruned layers ranked together.

    Args:
        sparsity: Fraction of the pruned layers' weights to have pruned, in
            [0, 1). Defaults to `0.9`.
        data: `(x, y)` arrays, or a dataset of `(x, y)` batches. Required.
        batches: As in `SNIP`. Defaults to `1`.
        loss: The loss; `None` uses the one the model was compiled with.
            Defaults to `None`.
        temperature: The logits are divided by it. Defaults to `200.0`.

    Example:

    ```python
    tf_lottery.prune(model, tf_lottery.GraSP(0.9, data=(x_train[:600], y_train[:600])))
    ```
    """

    arm = "grasp"

    def __init__(self, sparsity=0.9, *, data=None, batches=1, loss=None, temperature=200.0):
        super().__init__(sparsity, data=data, batches=batches, loss=loss)
        self.temperature = check_number(
            temperature, "temperature", positive=True, meaning="the logits are divided by it"
        )

    def scores(self, model, targets, masks):
        objectives = self.objectives(model, self.temperature)
        grads = self.mean_over_batches(
            lambda x, objective: gradients(model, objective, x, training=True), objectives
        )
        product = self.mean_over_batches(
            lambda x, objective: hessian_vector_product(model, objective, x, grads, training=True),
            objectives,
        )
        index = _variable_index(model, targets)
        # Larger is kept: the negative of GraSP's score.
        return [_read(t.weight) * product[i] for i, t in zip(index, targets)]

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


class SynFlow(InitCriterion):
    """Tanaka et al. 2020 (Iterative Synaptic Flow Pruning): data-free, iterative.

    Each of `iterations` steps replaces every weight by its magnitude, feeds an
    input of ones, takes R, the sum of the outputs, and scores each surviving
    weight |θ ⊙ ∂R/∂θ|; then it prunes to the next density of an exponential
    schedule from the current density to `1 - sparsity`. Scoring again after
    each small step keeps at least one path from input to output alive where
    one-shot criteria cut a layer off. The model is called in inference mode
    and nothing in it changes but the masks.

    The output must not be normalized (softmax sums to one whatever the
    weights): use a model that returns logits. Scores are computed in the
    model's dtype; the paper uses float64 for very deep networks.

    Args:
        sparsity: Fraction of the pruned layers' weights to have pruned, in
            [0, 1). Defaults to `0.9`.
        iterations: Pruning steps. Defaults to `100`, as in the paper.
        input_shape: The shape of one input without the batch dimension, or a
            list of them; `None` reads it from the model's inputs. Defaults to
            `None`.

    Example:

    ```python
    tf_lottery.prune(model, tf_lottery.SynFlow(0.99))
    ```
    """

    arm = "synflow"

    def __init__(self, sparsity=0.9, iterations=100, input_shape=None):
        super().__init__(sparsity)
        self.iterations = check_int(iterations, "iterations", minimum=1)
        self.input_shape = input_shape

    def _ones(self, model):
        shapes = self.input_shape
        if shapes is None:
            inputs = getattr(model, "inputs", None)
            if not inputs:
                raise ValueError(
                    "SynFlow feeds an input of ones, but the model has no known input shape. "
                    "Pass input_shape=(...) without the batch dimension. Received: "
                    "input_shape=None"
                )
            shapes = [tuple(t.shape[1:]) for t in inputs]
        elif isinstance(shapes[0], int):
            shapes = [tuple(shapes)]
        ones = [np.ones((1, *shape), dtype="float32") for shape in shapes]
        return ones[0] if len(ones) == 1 else ones

    def scores(self, model, targets, masks):
        index = _variable_index(model, targets)
        values = [np.abs(keras.ops.convert_to_numpy(v.value)) for v in model.trainable_variables]
        for i, mask in zip(index, masks):
            values[i] = values[i] * mask
        grads = gradients(model, _summed_outputs, self._ones(model), values=values)
        scores = [grads[i] * values[i] for i in index]
        if not any(np.any(s[m > 0] > 0) for s, m in zip(scores, masks)):
            raise ValueError(
                "SynFlow found no flow through the network: every score is zero. A softmax "
                "(or other normalized) output sums to a constant; use a model that returns "
                "logits."
            )
        return scores

    def select(self, model, targets, masks, count):
        masks = [m.copy() for m in masks]
        alive = int(sum(int((m > 0).sum()) for m in masks))
        if count >= alive:
            return [m > 0 for m in masks]
        start, end = alive, max(count, 1)
        for step in range(1, self.iterations + 1):
            kept = (
                count
                if step == self.iterations
                else round(start * (end / start) ** (step / self.iterations))
            )
            keep = keep_best_across(
                self.checked_scores(model, targets, masks), [m > 0 for m in masks], kept
            )
            masks = [np.where(k, m, 0) for k, m in zip(keep, masks)]
        return [m > 0 for m in masks]

    def get_config(self):
        shape = self.input_shape
        return {
            **super().get_config(),
            "iterations": self.iterations,
            "input_shape": None if shape is None else list(shape),
        }


def _summed_outputs(outputs):
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    if isinstance(outputs, (list, tuple)):
        return sum(keras.ops.sum(o) for o in outputs)
    return keras.ops.sum(outputs)
