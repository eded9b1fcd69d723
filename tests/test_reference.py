"""Cross-checks against tensorflow-model-optimization, the Keras 2 reference."""

import keras
import numpy as np
import pytest

import tf_lottery as tl

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
