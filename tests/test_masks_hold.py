"""How masks reach the optimizer step, checked on the backend this run uses.

CI runs this file under TensorFlow, JAX and PyTorch (`KERAS_BACKEND`). A pruned
weight must be exactly zero after every optimizer step: in `fit` (compiled with
`jit` on JAX), and in each backend's own custom training loop.
"""

import keras
import numpy as np
import pytest
from conftest import compile_model
from conftest import data
from conftest import mlp

import tf_lottery as tl

BACKEND = keras.backend.backend()


def _numpy(variable):
    return keras.ops.convert_to_numpy(variable.value)


def _assert_pruned_weights_are_zero(model, when):
    for wrapper in tl.find_wrappers(model):
        for masked in wrapper.masked_weights:
            pruned = _numpy(masked.mask) == 0
            assert pruned.any(), f"{when}: nothing pruned in {wrapper.layer.name}"
            moved = np.count_nonzero(_numpy(masked.variable)[pruned])
            assert moved == 0, f"{when}: {moved} pruned weights of {wrapper.layer.name} moved"


class _CheckEveryBatch(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        if BACKEND == "jax":
            # JAX keeps the state outside the variables between batches.
            self.model.jax_state_sync()
        _assert_pruned_weights_are_zero(self.model, f"batch {batch}")
        self.batches += 1


OPTIMIZERS = {
    "adam": lambda: keras.optimizers.Adam(1e-2),
    "sgd_momentum": lambda: keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
    "adamw": lambda: keras.optimizers.AdamW(1e-2, weight_decay=0.1),
    "rmsprop": lambda: keras.optimizers.RMSprop(1e-2, momentum=0.5),
}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_pruned_weights_are_zero_at_every_batch_end_of_fit(optimizer):
    # Slots are not reset between rounds, so the momenta of freshly pruned
    # weights are not zero: only masking inside the update step keeps them at 0.
    model = tl.wrap(mlp())
    tl.prune(model, tl.PruneFraction(0.3))
    model.compile(
        OPTIMIZERS[optimizer](),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = data()
    check = _CheckEveryBatch()
    pruning = tl.IterativePruning(
        tl.PruneFraction(0.5), rewind=None, reset_optimizer=False, verbose=0
    )
    model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[pruning, check])
    assert check.batches == 12
    assert pruning.rounds_done == 4
    _assert_pruned_weights_are_zero(model, "after fit")


def test_a_mask_changed_between_epochs_reaches_the_compiled_step():
    # The step was compiled with the dense masks; the masks of round 1 must be
    # used from the next batch on, with no retrace asked for.
    model = compile_model(tl.wrap(mlp()))
    x, y = data()
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    tl.prune(model, tl.PruneFraction(0.7))
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[_CheckEveryBatch()])


def test_a_rewind_lands_exactly_on_the_initial_weights():
    model = compile_model(tl.wrap(mlp()))
    initial = {
        (w.layer.name, s.name): _numpy(s.initial)
        for w in tl.find_wrappers(model)
        for s in w.saved_weights
    }
    x, y = data()
    pruning = tl.IterativePruning(tl.PruneFraction(0.5), rewind="init", verbose=0)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[pruning])
    for wrapper in tl.find_wrappers(model):
        for saved in wrapper.saved_weights:
            expected = initial[(wrapper.layer.name, saved.name)]
            if saved.mask is not None:
                expected = expected * _numpy(saved.mask)
            np.testing.assert_array_equal(_numpy(saved.variable), expected)


def _custom_loop_tensorflow(model, optimizer, loss_fn, x, y):
    import tensorflow as tf

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

    for _ in range(3):
        step()


def _custom_loop_jax(model, optimizer, loss_fn, x, y):
    import jax

    optimizer.build(model.trainable_variables)

    def loss_of(trainable, non_trainable):
        logits, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
        return loss_fn(y, logits), non_trainable

    @jax.jit
    def step(state):
        trainable, non_trainable, optimizer_state = state
        (_, non_trainable), grads = jax.value_and_grad(loss_of, has_aux=True)(
            trainable, non_trainable
        )
        trainable, optimizer_state = optimizer.stateless_apply(optimizer_state, grads, trainable)
        return trainable, non_trainable, optimizer_state

    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in optimizer.variables],
    )
    for _ in range(3):
        state = step(state)
    for variable, value in zip(model.trainable_variables, state[0]):
        variable.assign(value)


def _custom_loop_torch(model, optimizer, loss_fn, x, y):
    import torch

    for _ in range(3):
        model.zero_grad()
        loss = loss_fn(y, model(x, training=True))
        loss.backward()
        grads = [v.value.grad for v in model.trainable_variables]
        with torch.no_grad():
            optimizer.apply(grads, model.trainable_variables)


def test_custom_training_loop_of_this_backend_keeps_masks():
    loop = {
        "tensorflow": _custom_loop_tensorflow,
        "jax": _custom_loop_jax,
        "torch": _custom_loop_torch,
    }[BACKEND]
    model = tl.wrap(mlp())
    tl.prune(model, tl.PruneFraction(0.6))
    before = [_numpy(v) for v in model.trainable_variables]
    # The gradient of a pruned Dense weight is not zero (x_i * delta_j): only the
    # masked update keeps it at zero.
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    x, y = data()
    loop(model, keras.optimizers.SGD(0.1, momentum=0.9), loss_fn, x, y)
    after = [_numpy(v) for v in model.trainable_variables]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after)), "nothing trained"
    _assert_pruned_weights_are_zero(model, "after the custom loop")


@pytest.mark.skipif(BACKEND == "torch", reason="torch compiles with torch.compile, not XLA")
def test_an_xla_compiled_step_keeps_masks_and_sees_each_round():
    # TensorFlow compiles `fit` with XLA by default on a GPU (`jit_compile="auto"`),
    # and JAX always does; a round's new masks must reach that step as state.
    model = tl.wrap(mlp())
    tl.prune(model, tl.PruneFraction(0.5))
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    x, y = data()
    check = _CheckEveryBatch()
    pruning = tl.IterativePruning(tl.PruneFraction(0.5), rewind=None, verbose=0)
    model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[pruning, check])
    assert check.batches == 12 and pruning.rounds_done == 4
    _assert_pruned_weights_are_zero(model, "after fit")
    first = tl.find_wrappers(model)[0].masked_weights[0]
    assert np.mean(_numpy(first.mask)) == pytest.approx(0.5**4, abs=0.01)  # every round's cut


def test_the_train_step_carries_the_masks_but_no_saved_copy_on_jax(tmp_path):
    # JAX's compiled step gives back every variable it is handed, so what it is
    # handed is written again at every step: θ0, the thresholds and the counters
    # stay out of it there; everything is still a weight, and saved.
    model = tl.wrap(mlp())
    wrappers = tl.find_wrappers(model)
    masks = {id(m) for w in wrappers for m in w.masks.values()}
    masks |= {id(w.unit_mask) for w in wrappers if w.unit_mask is not None}
    copies = {id(s.initial) for w in wrappers for s in w.saved_weights}
    counters = {id(w.pruning_round) for w in wrappers}
    state = {id(v) for v in model.non_trainable_variables}
    assert masks <= state
    if BACKEND == "jax":
        assert not (copies | counters) & state
        assert state == masks
    else:
        assert copies | counters <= state
    assert masks | copies | counters <= {id(v) for v in model.weights}

    compile_model(model)
    x, y = data()
    pruning = tl.IterativePruning(tl.PruneFraction(0.5), rewind="init", verbose=0)
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[pruning])
    model.save(tmp_path / "m.keras")
    loaded = tl.load_model(tmp_path / "m.keras")
    for a, b in zip(tl.find_wrappers(model), tl.find_wrappers(loaded)):
        for sa, sb in zip(a.saved_weights, b.saved_weights):
            np.testing.assert_array_equal(_numpy(sa.initial), _numpy(sb.initial))
        assert int(_numpy(b.pruning_round)) == int(_numpy(a.pruning_round)) == 2
