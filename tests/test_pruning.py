"""One pruning round, rewinding and resetting the optimizer (tf_lottery/pruning.py)."""

import keras
import numpy as np
import pytest
from conftest import compile_model
from conftest import data
from conftest import mlp

import tf_lottery as tl
from tf_lottery import pruning

L = keras.layers


def wrapped_mlp():
    return compile_model(tl.wrap(mlp()))


def _conv_model():
    inputs = keras.Input((6, 6, 2))
    return keras.Model(inputs, L.Flatten()(L.Conv2D(4, 3)(inputs)))


def _kernels(model):
    return {w.target_name: w.masked_weights[0] for w in tl.find_wrappers(model)}


def _rounds(model):
    return {w.target_name: int(w.pruning_round.numpy()) for w in tl.find_wrappers(model)}


def test_prune_with_bad_settings_changes_nothing():
    wrapped = tl.wrap(mlp())
    before = [v.numpy().copy() for v in wrapped.weights]
    with pytest.raises(ValueError, match="per_layer.*nope"):
        tl.prune(wrapped, tl.PruneFraction(0.5, per_layer={"nope": 0.1}))
    conv = tl.wrap(_conv_model())
    with pytest.raises(ValueError, match="2-D"):
        tl.prune(conv, tl.PruneFraction(0.5, block=(4, 1)))
    for a, b in zip(before, wrapped.weights):
        np.testing.assert_array_equal(a, b.numpy())


def test_reset_optimizer_zeroes_slots_and_iterations():
    model = wrapped_mlp()
    x, y = data()
    model.fit(
        x, y, epochs=1, verbose=0, callbacks=[tl.IterativePruning(tl.PruneFraction(0.5), verbose=0)]
    )
    optimizer = model.optimizer
    assert int(optimizer.iterations.numpy()) == 0
    for variable in optimizer.variables:
        if variable is not optimizer._learning_rate:
            assert not np.any(variable.numpy())
    assert optimizer.learning_rate.numpy() == pytest.approx(1e-2)


OPTIMIZERS = {
    "sgd_momentum": lambda: keras.optimizers.SGD(momentum=0.9),
    "adam_amsgrad": lambda: keras.optimizers.Adam(amsgrad=True),
    "adam_ema": lambda: keras.optimizers.Adam(use_ema=True),
    "adagrad": lambda: keras.optimizers.Adagrad(initial_accumulator_value=0.3),
    "rmsprop": lambda: keras.optimizers.RMSprop(centered=True, momentum=0.5),
    "ftrl": lambda: keras.optimizers.Ftrl(),
    "nadam": lambda: keras.optimizers.Nadam(),  # its build makes a variable from a value
    "adafactor": lambda: keras.optimizers.Adafactor(),  # so does this one's
    "loss_scale": lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam()),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_reset_optimizer_gives_a_fresh_optimizers_values_without_allocating_its_twin(name):
    from keras.src.backend.common import global_state

    model = wrapped_mlp()
    optimizer = OPTIMIZERS[name]()
    model.compile(optimizer, "mse")
    x, y = data()
    model.fit(x, y[:, None].astype("float32"), epochs=2, verbose=0)
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    fresh = type(inner).from_config(inner.get_config())
    fresh.build(model.trainable_variables)
    tl.reset_optimizer(optimizer)
    assert len(inner.variables) == len(fresh.variables)
    for variable, start in zip(inner.variables, fresh.variables):
        if variable.name != "learning_rate":
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(variable),
                keras.ops.convert_to_numpy(start),
                variable.path,
            )
    # The twin's slots were deferred and forgotten: none is left for Keras to
    # initialize at the next stateless scope's exit.
    assert not global_state.get_global_attribute("uninitialized_variables", None)
    if name in ("sgd_momentum", "adam_amsgrad", "adagrad"):
        kept = tl.pruning._INITIAL_STATES[inner][1]
        assert not any(isinstance(value, np.ndarray) for value in kept)


def test_reset_optimizer_again_restores_a_nonzero_start_and_a_rebuilt_optimizer():
    # The fresh twin's values are kept after the first reset: a second reset must
    # still give Adagrad's nonzero start, and an optimizer built anew (other
    # variables) must not get the values kept for the old one.
    model = wrapped_mlp()
    model.compile(keras.optimizers.Adagrad(0.1, initial_accumulator_value=0.3), "mse")
    x, y = data()
    for _ in range(2):
        model.fit(x, y[:, None].astype("float32"), epochs=1, verbose=0)
        slots = [v for v in model.optimizer.variables if "accumulator" in v.path]
        assert slots and all(np.any(v.numpy() != 0.3) for v in slots)
        tl.reset_optimizer(model.optimizer)
        for variable in slots:
            np.testing.assert_array_equal(variable.numpy(), np.full(variable.shape, 0.3, "float32"))
        assert int(model.optimizer.iterations.numpy()) == 0
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse")
    model.fit(x, y[:, None].astype("float32"), epochs=1, verbose=0)
    tl.reset_optimizer(model.optimizer)
    momenta = [v for v in model.optimizer.variables if "momentum" in v.path]
    assert momenta and not any(np.any(v.numpy()) for v in momenta)


def test_apply_masks_restores_the_zeros_after_a_manual_edit():
    # Custom training loops of each backend are in test_masks_hold.py.
    model = tl.wrap(mlp())
    tl.prune(model, tl.PruneFraction(0.6))
    masked = [m for w in tl.find_wrappers(model) for m in w.masked_weights]
    for m in masked:
        m.variable.assign(m.variable.numpy() + 1)
        assert np.all(m.variable.numpy() != 0)
    tl.apply_masks(model)
    for m in masked:
        pruned = m.mask.numpy() == 0
        assert pruned.any() and np.all(m.variable.numpy()[pruned] == 0)


def test_a_model_without_wrappers_is_refused_naming_the_call():
    model = mlp()
    for call, name in (
        (lambda: tl.rewind(model), "rewind"),
        (lambda: tl.apply_masks(model), "apply_masks"),
        (lambda: tl.erk_targets(model, 0.5), "erk_targets"),
    ):
        with pytest.raises(
            ValueError, match=rf"tf_lottery\.{name}\(\) needs a model with PruneWrapper"
        ):
            call()


def test_prune_returns_a_threshold_per_weight_and_counts_the_round():
    model = tl.wrap(mlp())
    thresholds = tl.prune(model, tl.PruneFraction(0.5, output_rate=0.5))
    assert sorted(thresholds) == ["fc1/kernel", "out/kernel"]
    for name, masked in _kernels(model).items():
        mask = masked.mask.numpy()
        assert mask.mean() == pytest.approx(0.5)
        weight = np.abs(masked.variable.numpy())
        # Magnitude: every survivor is at least the threshold, every pruned weight is zero.
        assert np.all(weight[mask == 1] >= thresholds[f"{name}/kernel"])
        assert np.all(weight[mask == 0] == 0)
    assert _rounds(model) == {"fc1": 1, "out": 1}


def test_masks_only_shrink_over_rounds():
    model = tl.wrap(mlp())
    tl.prune(model, tl.PruneFraction(0.5, output_rate=0.5))
    first = {name: m.mask.numpy().copy() for name, m in _kernels(model).items()}
    tl.prune(model, tl.PruneFraction(0.5, output_rate=0.5))
    for name, masked in _kernels(model).items():
        mask = masked.mask.numpy()
        assert mask.mean() == pytest.approx(0.25, abs=0.02)
        assert np.all(mask <= first[name])
    assert _rounds(model) == {"fc1": 2, "out": 2}


def test_prune_layers_touches_only_the_layers_named():
    model = tl.wrap(mlp())
    out_before = _kernels(model)["out"].variable.numpy().copy()
    thresholds = tl.prune(model, tl.PruneFraction(0.5), layers="fc1")
    assert list(thresholds) == ["fc1/kernel"]
    kernels = _kernels(model)
    assert kernels["fc1"].mask.numpy().mean() == pytest.approx(0.5)
    assert np.all(kernels["out"].mask.numpy() == 1)
    np.testing.assert_array_equal(kernels["out"].variable.numpy(), out_before)
    assert _rounds(model) == {"fc1": 1, "out": 0}
    with pytest.raises(ValueError, match=r"layers names layers that are not wrapped: \['nope'\]"):
        tl.prune(model, tl.PruneFraction(0.5), layers=["nope"])


def test_write_masks_writes_masks_zeros_and_thresholds():
    model = tl.wrap(mlp())
    wrappers = tl.find_wrappers(model)
    targets = pruning.prune_targets(wrappers)
    assert [(t.layer, t.name, t.is_output) for t in targets] == [
        ("fc1", "kernel", False),
        ("out", "kernel", True),
    ]
    masks = [
        (np.zeros(t.weight.shape, "float32"), 0.25)
        if t.layer == "out"
        else (np.ones(t.weight.shape, "float32"), 0.0)
        for t in targets
    ]
    before = _kernels(model)["fc1"].variable.numpy().copy()
    thresholds = pruning.write_masks(model, wrappers, None, targets, masks, {})
    assert thresholds == {"fc1/kernel": 0.0, "out/kernel": 0.25}
    kernels = _kernels(model)
    np.testing.assert_array_equal(kernels["fc1"].variable.numpy(), before)
    assert not np.any(kernels["out"].variable.numpy())
    assert not np.any(kernels["out"].mask.numpy())
    assert float(kernels["out"].threshold.numpy()) == pytest.approx(0.25)
    assert _rounds(model) == {"fc1": 1, "out": 1}


def test_write_masks_takes_the_new_survivor_values_a_criterion_yields():
    model = tl.wrap(mlp())
    wrappers = tl.find_wrappers(model)
    targets = pruning.prune_targets(wrappers, layers={"out"})
    (target,) = targets
    mask = np.ones(target.weight.shape, "float32")
    mask[0] = 0
    values = np.full(target.weight.shape, 2.0, "float32")
    pruning.write_masks(model, wrappers, {"out"}, targets, [(mask, 0.1, values)], {})
    np.testing.assert_array_equal(_kernels(model)["out"].variable.numpy(), values * mask)
    assert _rounds(model) == {"fc1": 0, "out": 1}


def test_check_criterion_refuses_what_does_not_fit_the_wrapped_layers():
    wrappers = tl.find_wrappers(tl.wrap(mlp()))
    pruning.check_criterion(tl.PruneFraction(0.5, per_layer={"fc1": 0.1}), wrappers)
    with pytest.raises(
        ValueError, match=r"per_layer names layers that are not wrapped: \['nope'\]"
    ):
        pruning.check_criterion(tl.PruneFraction(0.5, per_layer={"nope": 0.1}), wrappers)
    with pytest.raises((TypeError, ValueError), match="criterion"):
        pruning.check_criterion("magnitude", wrappers)


def test_erk_targets_keep_the_overall_sparsity_and_small_layers_denser():
    inputs = keras.Input((64,))
    h = L.Dense(64, name="big")(inputs)
    model = tl.wrap(keras.Model(inputs, L.Dense(2, name="small")(h)))
    targets = tl.erk_targets(model, 0.8)
    assert sorted(targets) == ["big", "small"]
    sizes = {"big": 64 * 64, "small": 64 * 2}
    overall = sum(targets[k] * sizes[k] for k in sizes) / sum(sizes.values())
    assert overall == pytest.approx(0.8, abs=1e-3)
    assert targets["small"] < targets["big"]
    flatter = tl.erk_targets(model, 0.8, power_scale=0.5)
    assert targets["small"] < flatter["small"] < flatter["big"] < targets["big"]


def test_rewind_puts_survivors_back_and_keeps_pruned_weights_zero():
    model = tl.wrap(mlp())
    initial = {name: m.variable.numpy().copy() for name, m in _kernels(model).items()}
    tl.prune(model, tl.PruneFraction(0.5))
    for masked in _kernels(model).values():
        masked.variable.assign(masked.variable.numpy() * 3.0)
    tl.rewind(model, layers=["fc1"])
    kernels = _kernels(model)
    fc1 = kernels["fc1"]
    np.testing.assert_array_equal(fc1.variable.numpy(), initial["fc1"] * fc1.mask.numpy())
    out = kernels["out"]
    np.testing.assert_array_equal(out.variable.numpy(), initial["out"] * out.mask.numpy() * 3.0)


def test_rewind_refuses_bad_input_and_a_refusal_changes_nothing():
    model = tl.wrap(mlp())
    tl.prune(model, tl.PruneFraction(0.5))
    before = [v.numpy().copy() for v in model.weights]
    with pytest.raises(ValueError, match=r"to='initial' or 'rewind_point'. Received: to='epoch'"):
        tl.rewind(model, "epoch")
    with pytest.raises(ValueError, match=r"Layers \['fc1', 'out'\] have no rewind point saved yet"):
        tl.rewind(model, "rewind_point")
    with pytest.raises(ValueError, match="layers names layers that are not wrapped"):
        tl.rewind(model, layers="nope")
    masks_only = tl.wrap(mlp(), keep="masks")
    with pytest.raises(ValueError):
        tl.rewind(masks_only)
    for a, b in zip(before, model.weights):
        np.testing.assert_array_equal(a, b.numpy())


def test_rewind_to_the_rewind_point():
    model = tl.wrap(mlp(), keep="both")
    for wrapper in tl.find_rewind_wrappers(model):
        for saved in wrapper.saved_weights:
            saved.variable.assign(saved.variable.numpy() + 1.0)
        wrapper.save_rewind_point(1)
    point = {name: m.variable.numpy().copy() for name, m in _kernels(model).items()}
    tl.prune(model, tl.PruneFraction(0.5))
    tl.rewind(model, "rewind_point")
    for name, masked in _kernels(model).items():
        np.testing.assert_array_equal(masked.variable.numpy(), point[name] * masked.mask.numpy())


def test_rewindable_leaves_out_frozen_layers():
    model = tl.wrap(mlp())
    assert [w.target_name for w in pruning.rewindable(model)] == ["fc1", "out"]
    tl.find_wrappers(model)[0].layer.trainable = False
    assert [w.target_name for w in pruning.rewindable(model)] == ["out"]


def test_reset_optimizer_leaves_an_unbuilt_optimizer_and_keeps_the_learning_rate():
    optimizer = keras.optimizers.Adam(0.05)
    tl.reset_optimizer(optimizer)
    assert not optimizer.built
    variable = keras.Variable(np.ones((3,), "float32"))
    optimizer.apply([keras.ops.ones((3,))], [variable])
    assert int(optimizer.iterations.numpy()) == 1
    tl.reset_optimizer(optimizer)
    assert int(optimizer.iterations.numpy()) == 0
    assert float(optimizer.learning_rate.numpy()) == pytest.approx(0.05)
    slots = [v for v in optimizer.variables if v.name not in ("iteration", "learning_rate")]
    assert slots and not any(np.any(v.numpy()) for v in slots)


def test_reset_optimizer_resets_the_inner_optimizer_of_a_loss_scale_optimizer():
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1, momentum=0.9))
    optimizer.build([keras.Variable(np.ones((3,), "float32"))])
    inner = optimizer.inner_optimizer
    momenta = [v for v in inner.variables if "momentum" in v.path]
    # As after some steps (a step outside a compiled function fails on JAX).
    for momentum in momenta:
        momentum.assign(np.full(momentum.shape, 0.5, "float32"))
    inner.iterations.assign(5)
    assert momenta and all(np.any(v.numpy()) for v in momenta)
    tl.reset_optimizer(optimizer)
    assert not any(np.any(v.numpy()) for v in momenta)
    assert int(inner.iterations.numpy()) == 0
