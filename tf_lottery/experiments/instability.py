"""Instability analysis: linear mode connectivity (Frankle et al. 2020).

Two copies of a network are trained from the same starting point (θ0, or the
weights after k epochs), with the same masks, on two different data orders.
The network is *stable* if the error does not rise along the straight line
between the two trained networks: the error barrier, the largest error on the
path minus the mean of the errors at its two ends, is about zero. Frankle et al.
find that sparse winning tickets are found (match the dense accuracy) exactly
when they are stable in this sense, which for larger networks needs rewinding
to an early epoch rather than θ0.

Along the path every trainable weight is interpolated, w(α) = (1 - α)·w_a +
α·w_b; masked weights are zero in both networks, so they stay zero. The
BatchNormalization moving statistics of the interpolated network are not
interpolated: they are recomputed at each point with one pass over training
data (cumulative averages of the batch statistics), as the mean and variance
of a mixture of two networks are not the mixture of theirs.
"""

import dataclasses

import keras
import numpy as np

from tf_lottery import keras_private
from tf_lottery.files import save_figure
from tf_lottery.validators import check_int
from tf_lottery.masking import assign_copy
from tf_lottery.wrapper import find_wrappers


@dataclasses.dataclass(frozen=True)
class InterpolationResult:
    """Loss and accuracy at evenly spaced points between two networks.

    Attributes:
        alphas: The points, from 0 (the first network) to 1 (the second).
        loss: The loss at each point.
        accuracy: The accuracy at each point.
    """

    alphas: list
    loss: list
    accuracy: list

    @property
    def error(self):
        """1 - accuracy at each point."""
        return [1.0 - a for a in self.accuracy]

    @property
    def error_barrier(self):
        """The largest error on the path minus the mean error of its two ends."""
        return _barrier(self.error)

    @property
    def loss_barrier(self):
        """The largest loss on the path minus the mean loss of its two ends."""
        return _barrier(self.loss)

    def to_dict(self):
        """A JSON-ready dict, barriers included."""
        return {
            **dataclasses.asdict(self),
            "error_barrier": self.error_barrier,
            "loss_barrier": self.loss_barrier,
        }


def _barrier(values):
    return float(max(values) - (values[0] + values[-1]) / 2)


def check_points(points, argument="points"):
    """Raises a ValueError unless `points` is an integer >= 3."""
    return check_int(
        points,
        argument,
        minimum=3,
        meaning="the two trained networks and at least one point between them",
    )


def _check_shapes(model_a, model_b, what="The two networks have"):
    if [tuple(v.shape) for v in model_a.weights] != [tuple(v.shape) for v in model_b.weights]:
        raise ValueError(
            f"{what} different weights (by shape, in order), so there is no line between "
            "them. Interpolate two copies of one architecture."
        )


def _check_same_network(model_a, model_b):
    _check_shapes(model_a, model_b)
    for wa, wb in zip(find_wrappers(model_a), find_wrappers(model_b)):
        for ma, mb in zip(wa.masked_weights, wb.masked_weights):
            if not np.array_equal(_numpy(ma.mask), _numpy(mb.mask)):
                raise ValueError(
                    f"The two networks have different masks ({wa.target_name}/{ma.name}). "
                    "Instability analysis trains two copies with the same masks."
                )


def _numpy(variable):
    return keras.ops.convert_to_numpy(variable.value)


def _batch_norm_layers(model):
    return [
        layer
        for layer in keras_private.flatten_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def _batches(data, batch_size):
    if isinstance(data, tuple):
        x = data[0]
        return [x[i : i + batch_size] for i in range(0, len(x), batch_size)]
    return [batch[0] if isinstance(batch, (tuple, list)) else batch for batch in data]


def recompute_batch_norm(model, train_data, batch_size=32):
    """Sets every BatchNormalization's moving statistics from one pass over `train_data`.

    The moving mean and variance become the averages of the batch means and
    variances over the pass (the momentum of batch t is t / (t + 1)), with the
    model called in training mode. Other weights are unchanged.

    Args:
        model: A Keras model.
        train_data: `(x, y)` arrays or a dataset of batches.
        batch_size: Batch size for arrays. Defaults to `32`.
    """
    layers = _batch_norm_layers(model)
    if not layers:
        return
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.moving_mean.assign(keras.ops.zeros_like(layer.moving_mean.value))
        layer.moving_variance.assign(keras.ops.ones_like(layer.moving_variance.value))
    try:
        for step, x in enumerate(_batches(train_data, batch_size)):
            for layer in layers:
                layer.momentum = step / (step + 1)
            model(x, training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum


def _metrics(model, data):
    if isinstance(data, tuple):
        result = model.evaluate(*data, verbose=0, return_dict=True)
    else:
        result = model.evaluate(data, verbose=0, return_dict=True)
    accuracy = [k for k in result if k.endswith(("accuracy", "acc"))]
    if "loss" not in result or not accuracy:
        raise ValueError(
            "Instability analysis needs the loss and an accuracy metric: compile with "
            f"metrics=['accuracy']. The evaluation gave: {sorted(result)}"
        )
    return float(result["loss"]), float(result[accuracy[0]])


def _clone(model):
    clone = keras.models.clone_model(model)
    for target, source in zip(clone.weights, model.weights):
        assign_copy(target, source.value)
    clone.compile_from_config(model.get_compile_config())
    return clone


def interpolate(model_a, model_b, data, *, points=11, train_data=None, batch_size=32, model=None):
    """Evaluates the networks on the straight line between two trained networks.

    Every trainable weight is interpolated, w(α) = (1 - α)·w_a + α·w_b, at
    `points` evenly spaced α from 0 to 1. Masked weights, zero in both
    networks, stay zero. BatchNormalization moving statistics are recomputed at
    each point with one pass over `train_data` (see `recompute_batch_norm`);
    every other non-trainable variable is taken from `model_a`. Neither network
    is changed.

    Args:
        model_a: A compiled Keras model (with an accuracy metric).
        model_b: The same architecture with the same masks, e.g. trained from
            the same start on another data order.
        data: `(x, y)` arrays or a dataset on which to evaluate, e.g. test data.
        points: Number of points, >= 3, both ends included. Defaults to `11`.
        train_data: `(x, y)` arrays or a dataset for the BatchNormalization pass;
            needed only if the model has BatchNormalization. Defaults to `None`.
        batch_size: Batch size of that pass for arrays. Defaults to `32`.
        model: A compiled model of the same architecture to evaluate in (its
            weights are overwritten); `None` clones `model_a`. Defaults to
            `None`.

    Returns:
        An `InterpolationResult` with the loss and accuracy at each point and
        the error barrier.

    Example:

    ```python
    result = tf_lottery.interpolate(model_a, model_b, (x_test, y_test), points=11)
    print(f"error barrier {result.error_barrier:.2%}")
    ```
    """
    points = check_points(points)
    _check_same_network(model_a, model_b)
    work = _clone(model_a) if model is None else model
    _check_shapes(model_a, work, "model and model_a have")
    if _batch_norm_layers(work) and train_data is None:
        raise ValueError(
            "The networks have BatchNormalization, whose statistics are recomputed at each "
            "point of the path: pass train_data=(x, y) or a dataset. Received: train_data=None"
        )
    for target, source in zip(work.non_trainable_variables, model_a.non_trainable_variables):
        assign_copy(target, source.value)
    start = [_numpy(v) for v in model_a.trainable_variables]
    end = [_numpy(v) for v in model_b.trainable_variables]
    alphas = np.linspace(0.0, 1.0, points)
    losses, accuracies = [], []
    for alpha in alphas:
        for variable, a, b in zip(work.trainable_variables, start, end):
            # a + α(b - a): exactly a where the two agree, so a network
            # interpolated with itself stays itself.
            variable.assign((a + alpha * (b - a)).astype(a.dtype))
        if train_data is not None:
            recompute_batch_norm(work, train_data, batch_size)
        loss, accuracy = _metrics(work, data)
        losses.append(loss)
        accuracies.append(accuracy)
    return InterpolationResult([float(a) for a in alphas], losses, accuracies)


def _check_seeds(seeds):
    if (
        not isinstance(seeds, (tuple, list))
        or len(seeds) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise ValueError(
            "Expected seeds to be two non-negative integers, the data orders of the two "
            f"copies. Received: seeds={seeds!r}"
        )
    return tuple(seeds)


def instability_analysis(
    model, train_data, data, *, epochs, seeds=(1, 2), points=11, fit_kwargs=None
):
    """Trains two copies of `model` on two data orders and interpolates between them.

    Frankle et al. 2020's instability analysis. Both copies start from `model`'s
    current weights and masks (θ0, or a rewind point: set the model there
    first) with a fresh optimizer; copy i is trained after
    `keras.utils.set_random_seed(seeds[i])`, which sets the order in which `fit`
    shuffles arrays (and any dropout). A dataset must shuffle itself (without a
    fixed seed) for the orders to differ. `model` is not changed.

    Args:
        model: A compiled Keras model at the starting point, with its masks.
        train_data: `(x, y)` arrays or a dataset.
        data: `(x, y)` arrays or a dataset to evaluate on along the path.
        epochs: Training epochs of each copy.
        seeds: The two copies' seeds. Equal seeds give the same data order,
            and with deterministic ops two identical networks. Defaults to
            `(1, 2)`.
        points: Points on the path, >= 3. Defaults to `11`.
        fit_kwargs: Extra keyword arguments of `model.fit`, e.g. `batch_size`.
            Defaults to `None`.

    Returns:
        An `InterpolationResult`; its `error_barrier` is the instability.

    Example:

    ```python
    tf_lottery.rewind(model)     # back to θ0, masks kept
    result = tf_lottery.instability_analysis(
        model, (x_train, y_train), (x_test, y_test), epochs=10,
        fit_kwargs={"batch_size": 60})
    print(f"error barrier {result.error_barrier:.2%}")
    ```
    """
    points = check_points(points)
    seeds = _check_seeds(seeds)
    epochs = check_int(epochs, "epochs", minimum=1)
    fit_kwargs = {"verbose": 0, **(fit_kwargs or {})}
    copies = []
    for seed in seeds:
        copy = _clone(model)
        keras.utils.set_random_seed(seed)
        if isinstance(train_data, tuple):
            copy.fit(*train_data, epochs=epochs, **fit_kwargs)
        else:
            copy.fit(train_data, epochs=epochs, **fit_kwargs)
        copies.append(copy)
    return interpolate(
        *copies,
        data,
        points=points,
        train_data=train_data,
        batch_size=fit_kwargs.get("batch_size") or 32,
    )


def plot_interpolation(results, path):
    """Draws the error along each path, α on the x axis.

    Args:
        results: A dict from a label (e.g. `"ticket 20%"`) to an
            `InterpolationResult`.
        path: The PNG file to write (atomically).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for label, result in results.items():
        axis.plot(
            result.alphas,
            [100 * e for e in result.error],
            marker=".",
            label=f"{label} (barrier {100 * result.error_barrier:.1f})",
        )
    axis.set_xlabel("interpolation α (0: first copy, 1: second copy)")
    axis.set_ylabel("test error (%)")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)
