"""One pruning round, rewinding, and resetting the optimizer: the shared machinery.

`IterativePruning` calls these at epoch boundaries; they are public so that a
custom training loop or an experiment runner can do the same steps itself.
"""

import weakref

import keras
import numpy as np

from tf_lottery import batched
from tf_lottery import keras_private
from tf_lottery.criteria import PruneTarget
from tf_lottery.criteria import check_criterion as check_criterion_type
from tf_lottery.masking import IN_PLACE
from tf_lottery.masking import multiply_in_place
from tf_lottery.masking import read_threshold
from tf_lottery.masking import stored_threshold
from tf_lottery.masking import threshold_of
from tf_lottery.masking import write_threshold
from tf_lottery.registry import input_axes
from tf_lottery.selection import erk_sparsities
from tf_lottery.wrapper import REWIND_TARGETS
from tf_lottery.wrapper import find_rewind_wrappers
from tf_lottery.wrapper import find_wrappers
from tf_lottery.wrapper import rewound


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


def prune_targets(wrappers, layers=None, *, owner=None, values=False):
    """The `PruneTarget`s of `wrappers`, in order; the last wrapper is the output.

    The targets carry the variables, not their values: a criterion reads each
    tensor when its turn comes. With `layers` (names), only those layers' targets.
    With `owner` (the model) the thresholds are read in one call, and with
    `values=True` the weights and masks too, as numpy arrays, where the model is
    small enough (see `tf_lottery.batched`).
    """
    chosen = [
        (index, wrapper, masked)
        for index, wrapper in enumerate(wrappers)
        if layers is None or wrapper.target_name in layers
        for masked in wrapper.masked_weights
    ]
    thresholds = [m.threshold for _, _, m in chosen]
    weights = [(m.variable, m.mask) for _, _, m in chosen]
    if values and batched.size(v for v, _ in weights) <= batched.BATCH_WEIGHTS:
        flat = [v for pair in weights for v in pair]
        flat = batched.read(owner, "weights, masks and thresholds", flat + thresholds)
        count = len(thresholds)
        weights = list(zip(flat[: 2 * count : 2], flat[1 : 2 * count : 2]))
        thresholds = [threshold_of(t) for t in flat[2 * count :]]
    elif owner is None:
        thresholds = [read_threshold(t) for t in thresholds]
    else:
        thresholds = [threshold_of(t) for t in batched.read(owner, "thresholds", thresholds)]
    return [
        PruneTarget(
            layer=wrapper.target_name,
            name=masked.name,
            layer_type=type(wrapper.layer).__name__,
            weight=weight,
            mask=mask,
            threshold=threshold,
            is_output=index == len(wrappers) - 1,
            input_axes=input_axes(wrapper.layer, masked.variable),
        )
        for (index, wrapper, masked), (weight, mask), threshold in zip(chosen, weights, thresholds)
    ]


def check_criterion(criterion, wrappers):
    """Raises a ValueError if `criterion` does not fit the wrapped layers."""
    check_criterion_type(criterion)
    check_layer_names("per_layer", getattr(criterion, "per_layer", {}), wrappers)
    criterion.check(prune_targets(wrappers, owner=wrappers[0]))


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
    # Criteria that read one tensor at a time get the values of a small model
    # read in one call; those that read the model (SNIP, Wanda, unit criteria)
    # read as they go.
    plain = target is None and not criterion.uses_model
    plain = plain and not hasattr(criterion, "compute_unit_masks")
    targets = prune_targets(wrappers, layers, owner=model, values=plain)
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
    if plain and batched.compiles():  # PyTorch multiplies each weight in place instead
        return _write_masks_together(model, wrappers, layers, targets, masks)
    return write_masks(model, wrappers, layers, targets, masks, unit_masks)


def _write_masks_together(model, wrappers, layers, targets, masks):
    """`write_masks` for a criterion that only yields masks and thresholds: the
    masks of a small model are written in one call, after all are computed."""
    chosen = [w for w in wrappers if layers is None or w.target_name in layers]
    masked = [m for w in chosen for m in w.masked_weights]
    if batched.size(m.variable for m in masked) > batched.BATCH_WEIGHTS:
        return write_masks(model, wrappers, layers, targets, masks, {})
    results = list(masks)
    if any(len(result) > 2 for result in results):  # it moves the survivors too
        return write_masks(model, wrappers, layers, targets, results, {})
    thresholds = [threshold for _, threshold in results]
    stored = [stored_threshold(t) for t in thresholds]
    counters = [w.pruning_round for w in chosen]
    weights = [m.variable for m in masked]
    batched.run(
        model,
        "masks",
        weights + counters,
        [m.mask for m in masked] + [m.threshold for m in masked] + weights + counters,
        _masked_values,
        (tuple(mask for mask, _ in results), np.array(stored, "float32")),
    )
    return {f"{t.layer}/{t.name}": threshold for t, threshold in zip(targets, thresholds)}


def _masked_values(values, inputs):
    """New masks, thresholds, masked weights and round counters, for `batched.run`."""
    masks, thresholds = inputs
    weights, counters = values[: len(masks)], values[len(masks) :]
    return [
        *(keras.ops.convert_to_tensor(m) for m in masks),
        *(thresholds[i] for i in range(len(masks))),
        *(keras.ops.multiply(w, keras.ops.cast(m, w.dtype)) for w, m in zip(weights, masks)),
        *(c + 1 for c in counters),
    ]


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
        if values or not IN_PLACE:
            survivors = keras.ops.convert_to_tensor(values[0]) if values else weight.variable.value
            weight.variable.assign(keras.ops.multiply(survivors, mask))
        else:
            # PyTorch: in place, without a new tensor and its copy into the
            # variable (4 of the 7 ms a million weights took on a 2-core CPU).
            multiply_in_place(weight.variable.value, mask)
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
    epochs = rewind_epochs(model, wrappers)
    missing = [w.target_name for w in wrappers if to == "rewind_point" and epochs.get(w, -1) < 0]
    if missing:
        raise ValueError(
            f"Layers {missing} have no rewind point saved yet. Save one with "
            "wrapper.save_rewind_point(epoch) (IterativePruning does it at the epoch "
            "given by rewind=k), or rewind to='initial'."
        )
    # Every wrapper is asked before any rewinds, so that a refusal changes nothing.
    for wrapper in wrappers:
        wrapper.check_rewind(to, rewind_epoch=epochs.get(wrapper, -1))
    saved = [s for w in wrappers for s in w.saved_weights]
    if batched.size(s.variable for s in saved) > batched.BATCH_WEIGHTS:
        for wrapper in wrappers:
            wrapper.rewind(to)
        return
    masked = [s.mask is not None for s in saved]
    reads = [v for s in saved for v in (getattr(s, to), s.mask) if v is not None]

    def values(current, inputs):
        current = iter(current)
        return [rewound(next(current), next(current) if m else None) for m in masked]

    batched.run(model, f"rewind to {to}", reads, [s.variable for s in saved], values)


def rewind_epochs(model, wrappers):
    """A dict from each built wrapper of `wrappers` that keeps copies to the epoch
    of its rewind point (-1 for none), read in one call: each read of a scalar
    variable is a backend operation."""
    built = [w for w in wrappers if w.built and w.keep != "masks"]
    epochs = batched.read(model, "rewind epochs", [w.rewind_epoch for w in built])
    return {w: int(epoch) for w, epoch in zip(built, epochs)}


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
    # A learning rate that is a variable (not a schedule) is kept.
    pairs = [
        (variable, initial)
        for variable, initial in zip(optimizer.variables, _initial_state(optimizer))
        if variable.name != "learning_rate"
    ]
    arrays = tuple(initial for _, initial in pairs if isinstance(initial, np.ndarray))
    # Each variable's start: an input array, or a constant (zeros, Adagrad's 0.1),
    # of which no copy is kept.
    starts = [
        None if isinstance(initial, np.ndarray) else (tuple(v.shape), initial, v.dtype)
        for v, initial in pairs
    ]

    def values(current, inputs):
        given = iter(inputs)
        return [
            keras.ops.copy(next(given)) if start is None else keras.ops.full(*start)
            for start in starts
        ]

    batched.run(optimizer, "reset", [], [v for v, _ in pairs], values, arrays)


# optimizer -> (its variables' shapes, their initial values): a fresh twin is
# built once per optimizer, not at every round (on JAX that build was half a
# round's time on LeNet).
_INITIAL_STATES = weakref.WeakKeyDictionary()


def _initial_state(optimizer):
    """The values a fresh optimizer of the same config starts its variables from.

    Each is a Python scalar where the whole variable starts at one value, as the
    slots of Keras' optimizers do, else a numpy array. The fresh twin is built
    without allocating its slots where Keras allows it (a slot made by a constant
    initializer is read off the initializer): at 100 million weights, allocating
    and reading Adam's twin took 2-3 s.
    """
    shapes = [tuple(v.shape) for v in optimizer.variables]
    cached = _INITIAL_STATES.get(optimizer)
    if cached is not None and cached[0] == shapes:
        return cached[1]
    variables = keras_private.optimizer_model_variables(optimizer)
    fresh = optimizer.__class__.from_config(optimizer.get_config())
    try:
        initializers = keras_private.build_unallocated(fresh, variables)
    except ValueError:  # a build that makes a variable from a value
        fresh = optimizer.__class__.from_config(optimizer.get_config())
        fresh.build(variables)
        initializers = [None] * len(fresh.variables)
    values = []
    for variable, initializer in zip(fresh.variables, initializers):
        start = _constant_start(initializer)
        if start is None:
            if initializer is not None:
                keras_private.initialize_deferred(variable)
            value = keras.ops.convert_to_numpy(variable.value)
            flat = value.reshape(-1)
            constant = flat.size > 0 and bool(np.all(flat == flat[0]))
            start = flat[0].item() if constant else value
        values.append(start)
    _INITIAL_STATES[optimizer] = (shapes, values)
    return values


def _constant_start(initializer):
    """The one value a constant initializer fills a variable with, else `None`."""
    if isinstance(initializer, keras.initializers.Zeros):
        return 0.0
    if isinstance(initializer, keras.initializers.Ones):
        return 1.0
    if isinstance(initializer, keras.initializers.Constant):
        value = np.asarray(keras.ops.convert_to_numpy(initializer.value))
        if value.ndim == 0:
            return value.item()
    return None
