"""One pruning round, rewinding, and resetting the optimizer: the shared machinery.

`IterativePruning` calls these at epoch boundaries; they are public so that a
custom training loop or an experiment runner can do the same steps itself.
"""

import weakref

import keras
import numpy as np

from tf_lottery import keras_private

from tf_lottery.criteria import PruneTarget
from tf_lottery.criteria import check_criterion as check_criterion_type
from tf_lottery.selection import erk_sparsities
from tf_lottery.wrapper import _IN_PLACE
from tf_lottery.wrapper import _multiply_in_place
from tf_lottery.wrapper import assign_copy
from tf_lottery.wrapper import REWIND_TARGETS
from tf_lottery.registry import input_axes
from tf_lottery.wrapper import find_rewind_wrappers
from tf_lottery.wrapper import find_wrappers
from tf_lottery.wrapper import read_threshold
from tf_lottery.wrapper import write_threshold


def require_wrappers(model, caller):
    """The model's `PruneWrapper`s; a ValueError naming `caller` if there are none."""
    wrappers = find_wrappers(model)
    if not wrappers:
        raise ValueError(
            f"{caller} needs a model with PruneWrapper layers, but model '{model.name}' has "
            "none. Wrap it first: model = tf_lottery.wrap(model), or use "
            "tf_lottery.PruneWrapper(layer) inside a subclassed model."
        )
    return wrappers


def prune_targets(wrappers, layers=None):
    """The `PruneTarget`s of `wrappers`, in order; the last wrapper is the output.

    The targets carry the variables, not their values: a criterion reads each
    tensor when its turn comes. With `layers` (names), only those layers' targets.
    """
    return [
        PruneTarget(
            layer=wrapper.target_name,
            name=masked.name,
            layer_type=type(wrapper.layer).__name__,
            weight=masked.variable,
            mask=masked.mask,
            threshold=read_threshold(masked.threshold),
            is_output=index == len(wrappers) - 1,
            input_axes=input_axes(wrapper.layer, masked.variable),
        )
        for index, wrapper in enumerate(wrappers)
        if layers is None or wrapper.target_name in layers
        for masked in wrapper.masked_weights
    ]


def check_criterion(criterion, wrappers):
    """Raises a ValueError if `criterion` does not fit the wrapped layers."""
    check_criterion_type(criterion)
    check_layer_names("per_layer", getattr(criterion, "per_layer", {}), wrappers)
    criterion.check(prune_targets(wrappers))


def check_layer_names(argument, given, wrappers):
    """Raises a ValueError if `given` (names, or a dict keyed by them) names a
    layer that is not wrapped; `argument` is the argument's name for the message."""
    names = [w.target_name for w in wrappers]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValueError(
            f"{argument} names layers that are not wrapped: {unknown}. Wrapped layers: "
            f"{names}. Received: {argument}={given!r}"
        )


def _check_layers(layers, wrappers):
    if layers is None:
        return None
    if isinstance(layers, str):
        layers = [layers]
    check_layer_names("layers", list(layers), wrappers)
    return set(layers)


def prune(model, criterion, *, layers=None, sparsity=None, target=None):
    """Runs one pruning round on the `PruneWrapper`s of `model`.

    Computes the new masks with `criterion`, multiplies them into the old ones,
    sets the newly pruned weights to zero and records each threshold. Weights
    are not rewound: call `rewind` for that. `SparseGPT` also updates the
    surviving weights, which this writes into the layers.

    Args:
        model: A Keras model with `PruneWrapper` layers.
        criterion: A `tf_lottery` criterion, e.g. `PruneFraction(0.2)`.
        layers: Names of the wrapped layers to prune; `None` prunes all. With
            `scope="global"` the ranking covers these layers only. Defaults to
            `None`.
        sparsity: Instead of one round of the criterion's rule, prune to this
            target sparsity: a fraction in [0, 1), or (with `scope="layer"`) a
            dict from layer name to a fraction such as `erk_targets` gives. Only
            criteria that accept a target (`PruneFraction`, `RandomPrune`) take
            it. Defaults to `None`.
        target: Instead of a rate, prune as many units as it takes to meet a
            `tf_lottery.Target` (MACs, parameters or latency of the model as
            `shrink` makes it), ranked over all layers by normalized scores;
            unit criteria only. `tf_lottery.target_report` gives the figure
            reached. Defaults to `None`.

    Returns:
        A dict from `"layer/weight"` to the threshold used.

    Example:

    ```python
    tf_lottery.prune(model, tf_lottery.StdThreshold(quality=1.0))
    print(tf_lottery.sparsity(model))
    ```
    """
    wrappers = require_wrappers(model, "tf_lottery.prune()")
    layers = _check_layers(layers, wrappers)
    check_criterion(criterion, wrappers)
    targets = prune_targets(wrappers, layers)
    unit_masks = {}
    if target is not None:
        from tf_lottery.structured.target import target_masks  # it builds on this module

        masks, unit_masks = target_masks(model, criterion, targets, target, sparsity)
    elif sparsity is not None and criterion.uses_model:
        masks = criterion.compute_target_masks(targets, sparsity, model=model)
    elif sparsity is not None:
        masks = criterion.compute_target_masks(targets, sparsity)
    elif hasattr(criterion, "compute_unit_masks"):
        masks, unit_masks = criterion.compute_unit_masks(targets, model)
    elif criterion.uses_model:
        masks = criterion.compute_masks(targets, model=model)
    else:
        masks = criterion.compute_masks(targets)
    return write_masks(model, wrappers, layers, targets, masks, unit_masks)


def write_masks(model, wrappers, layers, targets, masks, unit_masks):
    """Writes a round's masks (and unit masks) into the wrappers, as `prune` does.

    Returns:
        A dict from `"layer/weight"` to the threshold used.
    """
    masked = [
        m for w in wrappers if layers is None or w.target_name in layers for m in w.masked_weights
    ]
    thresholds = {}
    # The masks come from a generator: each tensor is read, masked and written
    # before the next is read, so a round holds about one tensor in memory, and a
    # criterion that calibrates layer by layer (Wanda, SparseGPT) sees the layers
    # before the next one already pruned. A criterion that also moves the
    # surviving weights (SparseGPT) yields their new values third.
    for target, weight, (mask, threshold, *values) in zip(targets, masked, masks):
        mask = keras.ops.convert_to_tensor(mask)  # converted once, used twice
        weight.mask.assign(mask)
        write_threshold(weight.threshold, threshold)
        if values or not _IN_PLACE:
            survivors = keras.ops.convert_to_tensor(values[0]) if values else weight.variable.value
            weight.variable.assign(keras.ops.multiply(survivors, mask))
        else:
            # PyTorch: in place, without a new tensor and its copy into the
            # variable (4 of the 7 ms a million weights took on a 2-core CPU).
            _multiply_in_place(weight.variable.value, mask)
        thresholds[f"{target.layer}/{target.name}"] = threshold
    for wrapper in find_rewind_wrappers(model):
        if wrapper.target_name in unit_masks:
            wrapper.unit_mask.assign(unit_masks[wrapper.target_name])
            wrapper.apply_masks()  # the pruned units' biases, γ and β become zero
    for wrapper in wrappers:
        if layers is None or wrapper.target_name in layers:
            wrapper.pruning_round.assign(wrapper.pruning_round + 1)
    return thresholds


def erk_targets(model, sparsity, *, power_scale=1.0):
    """Per-layer target sparsities that spread `sparsity` by Erdős–Rényi-kernel scaling.

    Evci et al. 2020 (RigL): each pruned tensor gets a density proportional to
    the sum of its dimensions over their product, so that small layers (the
    first convolution, the output layer) stay denser than large ones while the
    model as a whole keeps `1 - sparsity` of its prunable weights. A layer with
    several pruned tensors gets their combined sparsity.

    Args:
        model: A Keras model with `PruneWrapper` layers.
        sparsity: The overall target, in [0, 1).
        power_scale: Exponent on the ratio; below 1 spreads more evenly.
            Defaults to `1.0`.

    Returns:
        A dict from layer name to its target sparsity (0 for layers kept
        dense), for `IterativePruning(layer_targets=...)` or
        `tf_lottery.prune(model, PruneFraction(), sparsity=...)`.

    Example:

    ```python
    targets = tf_lottery.erk_targets(model, 0.9)
    tf_lottery.prune(model, tf_lottery.PruneFraction(), sparsity=targets)
    ```
    """
    targets = prune_targets(require_wrappers(model, "tf_lottery.erk_targets()"))
    values = erk_sparsities([t.weight.shape for t in targets], sparsity, power_scale)
    pruned, total = {}, {}
    for target, value in zip(targets, values):
        size = int(np.prod(target.weight.shape))
        pruned[target.layer] = pruned.get(target.layer, 0.0) + value * size
        total[target.layer] = total.get(target.layer, 0) + size
    return {layer: pruned[layer] / total[layer] for layer in pruned}


def rewind(model, to="initial", *, layers=None):
    """Resets every weight of the model that a wrapper keeps, pruned weights staying zero.

    One definition of rewinding, used by `IterativePruning` and the lottery
    runner alike: every `PruneWrapper` and `RewindWrapper` (which `wrap` puts
    around every layer with weights) puts all of its layer's weights back,
    trainable and non-trainable, BatchNormalization's moving statistics
    included. Frozen layers (`trainable=False`) are left as they are.

    Args:
        model: A Keras model with `PruneWrapper` layers.
        to: `"initial"` for the initial weights θ0 (the lottery ticket), or
            `"rewind_point"` for the copy saved during training (late rewinding).
            Defaults to `"initial"`.
        layers: Names of the wrapped layers to rewind; `None` rewinds all.
            Defaults to `None`.

    Example:

    ```python
    tf_lottery.prune(model, tf_lottery.PruneFraction(0.2))
    tf_lottery.rewind(model)               # survivors and BN statistics back to θ0
    ```
    """
    require_wrappers(model, "tf_lottery.rewind()")
    wrappers = rewindable(model)
    selected = _check_layers(layers, wrappers)
    wrappers = [w for w in wrappers if selected is None or w.target_name in selected]
    if to not in REWIND_TARGETS:
        raise ValueError(f"Expected to='initial' or 'rewind_point'. Received: to={to!r}")
    missing = [w.target_name for w in wrappers if to == "rewind_point" and not w.has_rewind_point]
    if missing:
        raise ValueError(
            f"Layers {missing} have no rewind point saved yet. Save one with "
            "wrapper.save_rewind_point(epoch) (IterativePruning does it at the epoch "
            "given by rewind=k), or rewind to='initial'."
        )
    # Every wrapper is asked before any rewinds, so that a refusal changes nothing.
    for wrapper in wrappers:
        wrapper.check_rewind(to)
    for wrapper in wrappers:
        wrapper.rewind(to)


def rewindable(model):
    """The wrappers of `model` that rewinding resets: all but frozen layers'."""
    return [w for w in find_rewind_wrappers(model) if w.layer.trainable]


def apply_masks(model):
    """Sets every pruned weight of `model` to zero.

    Keras optimizers already do this after each step (the mask is the weight's
    constraint), so `fit` and loops that call `optimizer.apply_gradients` or
    `optimizer.apply` need nothing more. Call it after changing weights some other
    way, e.g. `model.set_weights(...)` or a hand-written update.

    Example:

    ```python
    for x, y in dataset:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))  # masks hold
    tf_lottery.apply_masks(model)  # only needed after manual weight edits
    ```
    """
    require_wrappers(model, "tf_lottery.apply_masks()")
    for wrapper in find_rewind_wrappers(model):
        wrapper.apply_masks()


def reset_optimizer(optimizer):
    """Puts a built Keras optimizer back to its initial state.

    Slots (momenta, second moments, accumulators) go back to the values a fresh
    optimizer of the same config starts from, and the iteration count to zero,
    so the next round trains like a fresh run with the same learning-rate
    schedule. The learning rate itself is kept. A `LossScaleOptimizer` keeps its
    loss scale; its inner optimizer is reset.
    """
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    if not optimizer.built:
        return
    for variable, initial in zip(optimizer.variables, _initial_state(optimizer)):
        # A learning rate that is a variable (not a schedule) is kept.
        if variable.name == "learning_rate":
            continue
        if isinstance(initial, np.ndarray):
            assign_copy(variable, initial)
        else:  # a slot that starts constant (zeros, Adagrad's 0.1): no copy kept
            variable.assign(keras.ops.full(variable.shape, initial, variable.dtype))


# optimizer -> (its variables' shapes, their initial values): a fresh twin is
# built once per optimizer, not at every round (on JAX that build was half a
# round's time on LeNet).
_INITIAL_STATES = weakref.WeakKeyDictionary()


def _initial_state(optimizer):
    """The values a fresh optimizer of the same config starts its variables from.

    Each is a Python scalar where the whole variable starts at one value, as the
    slots of Keras' optimizers do, else a numpy array.
    """
    shapes = [tuple(v.shape) for v in optimizer.variables]
    cached = _INITIAL_STATES.get(optimizer)
    if cached is not None and cached[0] == shapes:
        return cached[1]
    fresh = optimizer.__class__.from_config(optimizer.get_config())
    fresh.build(keras_private.optimizer_model_variables(optimizer))
    values = []
    for variable in fresh.variables:
        value = keras.ops.convert_to_numpy(variable.value)
        flat = value.reshape(-1)
        constant = flat.size > 0 and bool(np.all(flat == flat[0]))
        values.append(flat[0].item() if constant else value)
    _INITIAL_STATES[optimizer] = (shapes, values)
    return values
