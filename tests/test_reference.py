"""Cross-checks against tensorflow-model-optimization, the Keras 2 reference."""

import keras
import numpy as np
import pytest

import tf_lottery as tl
from tf_lottery.compat import tfmot as compat

pytestmark = pytest.mark.tensorflow

tfmot = pytest.importorskip("tensorflow_model_optimization")
tf_keras = pytest.importorskip("tf_keras")


def test_magnitude_masks_equal_tfmot_at_the_same_sparsity():
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(20, 16)).astype("float32")
    w2 = rng.normal(size=(16, 3)).astype("float32")
    reference = tf_keras.Sequential(
        [tf_keras.layers.Dense(16, input_shape=(20,)), tf_keras.layers.Dense(3)]
    )
    reference.set_weights([w1, np.zeros(16, "float32"), w2, np.zeros(3, "float32")])
    schedule = tfmot.sparsity.keras.ConstantSparsity(0.5, begin_step=0, frequency=1)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(reference, pruning_schedule=schedule)
    pruned.compile(tf_keras.optimizers.SGD(0.0), "mse")  # lr 0: tfmot only updates its masks
    x = rng.normal(size=(8, 20)).astype("float32")
    pruned.fit(
        x,
        rng.normal(size=(8, 3)),
        epochs=1,
        batch_size=8,
        verbose=0,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
    )
    reference_masks = [v.numpy() for v in pruned.weights if "mask" in v.name]

    ours = tl.wrap(
        keras.Sequential([keras.Input((20,)), keras.layers.Dense(16), keras.layers.Dense(3)])
    )
    wrappers = tl.find_wrappers(ours)
    wrappers[0].layer.set_weights([w1, np.zeros(16, "float32")])
    wrappers[1].layer.set_weights([w2, np.zeros(3, "float32")])
    tl.prune(ours, tl.PruneFraction(0.5, output_rate=0.5))
    assert len(reference_masks) == 2
    for wrapper, reference_mask in zip(wrappers, reference_masks):
        np.testing.assert_array_equal(wrapper.masks["kernel"].numpy(), reference_mask)


@keras.saving.register_keras_serializable(package="tests")
class Gated(keras.layers.Layer):
    """A user layer that says which of its weights may be pruned."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 4), name="w")
        self.gate = self.add_weight(shape=(4,), name="gate", initializer="ones")

    def call(self, x):
        return keras.ops.matmul(x, self.w) * self.gate

    def get_prunable_weights(self):
        return [self.w]


def test_a_user_layer_with_get_prunable_weights_is_pruned():
    model = tl.wrap(keras.Sequential([keras.Input((6,)), Gated(name="gated")]))
    (wrapper,) = tl.find_wrappers(model)
    assert list(wrapper.masks) == ["w"]
    tl.prune(model, tl.PruneFraction(0.5, output_rate=0.5))
    assert wrapper.masks["w"].numpy().sum() == 12
    assert np.all(wrapper.layer.gate.numpy() == 1)


# Gradual pruning: the masks equal tfmot's on tf_keras after every training step,
# for the same weights and schedule, with learning rate 0 (so that only the masks
# change). tfmot recomputes its masks from all the weights and tf_lottery's only
# shrink; with the weights fixed the two agree.

STEPS = 14


def _masks(model):
    """The weight masks: tf_lottery's from its wrappers, tfmot's by their name."""
    wrappers = tl.find_wrappers(model) if isinstance(model, keras.Model) else []
    if wrappers:
        return [np.array(m.mask.numpy()) for w in wrappers for m in w.masked_weights]
    return [np.array(v.numpy()) for v in model.weights if "mask" in v.name]


def _fit_and_record(model, keras_module, callbacks, x, y):
    masks = []

    class Record(keras_module.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            masks.append(_masks(self.model))

    model.compile(keras_module.optimizers.SGD(0.0), "mse")
    model.fit(
        x, y, batch_size=1, epochs=2, shuffle=False, verbose=0, callbacks=callbacks + [Record()]
    )
    return masks


def _dense_models(inputs):
    reference = tf_keras.Sequential(
        [tf_keras.layers.Dense(16, input_shape=(inputs,)), tf_keras.layers.Dense(8)]
    )
    ours = keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(16), keras.layers.Dense(8)])
    return reference, ours


def _conv_models():
    reference = tf_keras.Sequential(
        [
            tf_keras.layers.Conv2D(8, 3, input_shape=(6, 6, 4)),
            tf_keras.layers.Flatten(),
            tf_keras.layers.Dense(4),
        ]
    )
    ours = keras.Sequential(
        [
            keras.Input((6, 6, 4)),
            keras.layers.Conv2D(8, 3),
            keras.layers.Flatten(),
            keras.layers.Dense(4),
        ]
    )
    return reference, ours


def _same_weights(reference, ours, seed=0):
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=w.shape).astype("float32") for w in ours.get_weights()]
    reference.set_weights(weights)
    ours.set_weights(weights)


def _data(model, outputs):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(STEPS // 2, *model.input_shape[1:])).astype("float32")
    return x, rng.normal(size=(STEPS // 2, outputs)).astype("float32")


SCHEDULE = dict(initial_sparsity=0.2, final_sparsity=0.85, begin_step=1, end_step=11, frequency=2)


@pytest.mark.parametrize(
    "models, settings",
    [
        (lambda: _dense_models(20), {}),
        (lambda: _conv_models(), {}),
        (lambda: _dense_models(20), {"block_size": (4, 2)}),
        (lambda: _dense_models(20), {"block_size": (2, 4), "block_pooling_type": "MAX"}),
        (lambda: _dense_models(20), {"sparsity_m_by_n": (2, 4)}),
        (lambda: _dense_models(22), {"sparsity_m_by_n": (2, 4)}),  # a partial last group
        (lambda: _conv_models(), {"sparsity_m_by_n": (1, 4)}),
    ],
    ids=["dense", "conv", "block", "block-max", "2:4", "2:4-partial", "conv-1:4"],
)
def test_masks_equal_tfmot_at_every_step(models, settings):
    reference, ours = models()
    _same_weights(reference, ours)
    x, y = _data(ours, ours.output_shape[-1])
    schedules = (
        tfmot.sparsity.keras.PolynomialDecay(**SCHEDULE),
        compat.sparsity.keras.PolynomialDecay(**SCHEDULE),
    )
    pruned = tfmot.sparsity.keras.prune_low_magnitude(
        reference, pruning_schedule=schedules[0], **settings
    )
    expected = _fit_and_record(pruned, tf_keras, [tfmot.sparsity.keras.UpdatePruningStep()], x, y)
    ours = compat.sparsity.keras.prune_low_magnitude(
        ours, pruning_schedule=schedules[1], **settings
    )
    got = _fit_and_record(ours, keras, [compat.sparsity.keras.UpdatePruningStep()], x, y)
    assert len(got) == len(expected) == STEPS
    for step, (ours_step, reference_step) in enumerate(zip(got, expected), start=1):
        for a, b in zip(ours_step, reference_step, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"step {step}")
    # The masks did change, step after step (m-by-n masks once, at step 1).
    dense = [[np.ones_like(m) for m in got[0]]]
    changes = sum(
        any(not np.array_equal(a, b) for a, b in zip(now, before))
        for now, before in zip(got, dense + got[:-1])
    )
    assert changes == 1 if "sparsity_m_by_n" in settings else changes >= 5


def test_gradual_pruning_masks_equal_tfmot_at_every_step():
    reference, ours = _dense_models(20)
    _same_weights(reference, ours)
    x, y = _data(ours, 8)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(
        reference, pruning_schedule=tfmot.sparsity.keras.PolynomialDecay(**SCHEDULE)
    )
    expected = _fit_and_record(pruned, tf_keras, [tfmot.sparsity.keras.UpdatePruningStep()], x, y)
    ours = tl.wrap(ours)
    got = _fit_and_record(ours, keras, [tl.GradualPruning(tl.PolynomialDecay(**SCHEDULE))], x, y)
    for step, (a_step, b_step) in enumerate(zip(got, expected), start=1):
        for a, b in zip(a_step, b_step, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"step {step}")


def test_the_guides_custom_loop_prunes_at_tfmots_steps():
    # tfmot's comprehensive guide: a loop that calls only on_train_begin,
    # on_train_batch_begin (batch=-1) and on_epoch_end.
    def run(tfmot_module, keras_module, model):
        schedule = tfmot_module.sparsity.keras.PolynomialDecay(**SCHEDULE)
        model_for_pruning = tfmot_module.sparsity.keras.prune_low_magnitude(
            model, pruning_schedule=schedule
        )
        optimizer = keras_module.optimizers.SGD(0.0)
        model_for_pruning.optimizer = optimizer
        step_callback = tfmot_module.sparsity.keras.UpdatePruningStep()
        step_callback.set_model(model_for_pruning)
        step_callback.on_train_begin()
        masks = []
        for _ in range(3):
            for _ in range(4):
                step_callback.on_train_batch_begin(batch=-1)
                with tf.GradientTape() as tape:
                    logits = model_for_pruning(x, training=True)
                    loss_value = keras_module.losses.mean_squared_error(y, logits)
                    grads = tape.gradient(loss_value, model_for_pruning.trainable_variables)
                    optimizer.apply_gradients(zip(grads, model_for_pruning.trainable_variables))
                masks.append(_masks(model_for_pruning))
            step_callback.on_epoch_end(batch=-1)
        return masks

    import tensorflow as tf

    reference, ours = _dense_models(20)
    _same_weights(reference, ours)
    x, y = _data(ours, 8)
    expected = run(tfmot, tf_keras, reference)
    got = run(compat, keras, ours)
    assert 1 - got[-1][0].mean() == pytest.approx(0.85, abs=0.01)
    for step, (a_step, b_step) in enumerate(zip(got, expected), start=1):
        for a, b in zip(a_step, b_step, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"step {step}")
