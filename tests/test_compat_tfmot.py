"""tfmot's pruning API on Keras 3: its guides' code runs with only the import changed.

The guides are tfmot's "Pruning in Keras example" and "Pruning comprehensive
guide", on small random data. Besides the import, what changed is said where it
is: Keras 3 itself needs `.weights.h5` for `save_weights`, and the example runs
its two epochs with batches of 8 so that its schedule (one update every 100
steps) gets to prune. The masks are compared with tfmot's, step by step, in
test_reference.py.
"""

import importlib.util
import os
import tempfile

import keras
import numpy as np
import pytest
from conftest import data

import tf_lottery as tl
from tf_lottery.compat import tfmot

BACKEND = keras.backend.backend()
needs_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None,
    reason="keras.callbacks.TensorBoard (and so PruningSummaries) needs the tensorboard package",
)


def _kernel_sparsity(layer):
    kernel = keras.ops.convert_to_numpy(layer.weights[0].value)
    return 1 - np.count_nonzero(kernel) / kernel.size


@pytest.mark.tensorflow
@needs_tensorboard
def test_the_pruning_in_keras_example(tmp_path):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    train_images = rng.random((1000, 28, 28)).astype("float32")
    train_labels = rng.integers(0, 10, 1000)
    test_images = rng.random((100, 28, 28)).astype("float32")
    test_labels = rng.integers(0, 10, 100)

    # --- the example's code, with `import keras` for tfmot's compat keras ---
    model = keras.Sequential(
        [
            keras.layers.InputLayer(input_shape=(28, 28)),
            keras.layers.Reshape(target_shape=(28, 28, 1)),
            keras.layers.Conv2D(filters=12, kernel_size=(3, 3), activation="relu"),
            keras.layers.MaxPooling2D(pool_size=(2, 2)),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(train_images, train_labels, epochs=1, validation_split=0.1, verbose=0)
    _, baseline_model_accuracy = model.evaluate(test_images, test_labels, verbose=0)
    _, keras_file = tempfile.mkstemp(".h5")
    keras.models.save_model(model, keras_file, include_optimizer=False)

    prune_low_magnitude = tfmot.sparsity.keras.prune_low_magnitude
    batch_size = 8  # 128 in the example, which has 60,000 images
    epochs = 2
    validation_split = 0.1
    num_images = train_images.shape[0] * (1 - validation_split)
    end_step = np.ceil(num_images / batch_size).astype(np.int32) * epochs
    pruning_params = {
        "pruning_schedule": tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=0.50, final_sparsity=0.80, begin_step=0, end_step=end_step
        )
    }
    model_for_pruning = prune_low_magnitude(model, **pruning_params)
    model_for_pruning.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model_for_pruning.summary()
    logdir = tempfile.mkdtemp()
    callbacks = [
        tfmot.sparsity.keras.UpdatePruningStep(),
        tfmot.sparsity.keras.PruningSummaries(log_dir=logdir),
    ]
    model_for_pruning.fit(
        train_images,
        train_labels,
        batch_size=batch_size,
        epochs=epochs,
        validation_split=validation_split,
        callbacks=callbacks,
        verbose=0,
    )
    _, model_for_pruning_accuracy = model_for_pruning.evaluate(test_images, test_labels, verbose=0)
    model_for_export = tfmot.sparsity.keras.strip_pruning(model_for_pruning)
    _, pruned_keras_file = tempfile.mkstemp(".h5")
    keras.models.save_model(model_for_export, pruned_keras_file, include_optimizer=False)
    converter = tf.lite.TFLiteConverter.from_keras_model(model_for_export)
    pruned_tflite_model = converter.convert()
    # --- end of the example's code ---

    # tfmot's flow never rewinds: its wrappers keep masks and no copies of the weights.
    assert all(
        w.keep == "masks" and not w.saved_weights for w in tl.find_wrappers(model_for_pruning)
    )
    # 113 steps per epoch: updates at steps 100 and 200, the last to the
    # schedule's sparsity at step 200.
    expected = pruning_params["pruning_schedule"](200)[1]
    for layer in model_for_export.layers:
        if layer.weights:
            assert _kernel_sparsity(layer) == pytest.approx(expected, abs=0.01), layer.name
    assert not any(isinstance(layer, tl.RewindWrapper) for layer in model_for_export.layers)
    assert os.listdir(os.path.join(logdir, "metrics"))
    interpreter = tf.lite.Interpreter(model_content=pruned_tflite_model)
    interpreter.allocate_tensors()
    (entry,), (exit_,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.set_tensor(entry["index"], test_images[:1])
    interpreter.invoke()
    np.testing.assert_allclose(
        interpreter.get_tensor(exit_["index"]),
        model_for_export.predict(test_images[:1], verbose=0),
        atol=1e-4,
    )
    assert os.path.getsize(keras_file) and os.path.getsize(pruned_keras_file)


# The comprehensive guide's setup, on its own random data.
input_shape = [20]


def setup_model():
    model = keras.Sequential(
        [keras.layers.Dense(20, input_shape=input_shape), keras.layers.Flatten()]
    )
    return model


@pytest.fixture()
def guide():
    x_train = np.random.randn(1, 20).astype(np.float32)
    y_train = keras.utils.to_categorical(np.random.randn(1), num_classes=20)
    model = setup_model()
    model.compile(
        loss=keras.losses.categorical_crossentropy, optimizer="adam", metrics=["accuracy"]
    )
    model.fit(x_train, y_train, verbose=0)
    _, pretrained_weights = tempfile.mkstemp(".weights.h5")  # ".tf" in the guide
    model.save_weights(pretrained_weights)
    return x_train, y_train, pretrained_weights


def test_the_guides_ways_to_prune_some_layers(guide):
    _, _, pretrained_weights = guide
    base_model = setup_model()
    base_model.load_weights(pretrained_weights)
    model_for_pruning = tfmot.sparsity.keras.prune_low_magnitude(base_model)
    assert isinstance(model_for_pruning.layers[0], tfmot.sparsity.keras.PruneLowMagnitude)
    np.testing.assert_array_equal(
        model_for_pruning.layers[0].layer.kernel.numpy(), base_model.layers[0].kernel.numpy()
    )

    # Sequential and Functional: clone_model with a clone_function.
    def apply_pruning_to_dense(layer):
        if isinstance(layer, keras.layers.Dense):
            return tfmot.sparsity.keras.prune_low_magnitude(layer)
        return layer

    model_for_pruning = keras.models.clone_model(
        base_model,
        clone_function=apply_pruning_to_dense,
    )
    assert [type(layer).__name__ for layer in model_for_pruning.layers] == [
        "PruneLowMagnitude",
        "Flatten",
    ]

    i = keras.Input(shape=(20,))
    x = tfmot.sparsity.keras.prune_low_magnitude(keras.layers.Dense(10))(i)
    o = keras.layers.Flatten()(x)
    model_for_pruning = keras.Model(inputs=i, outputs=o)
    assert len(tl.find_wrappers(model_for_pruning)) == 1

    model_for_pruning = keras.Sequential(
        [
            tfmot.sparsity.keras.prune_low_magnitude(
                keras.layers.Dense(20, input_shape=input_shape)
            ),
            keras.layers.Flatten(),
        ]
    )
    assert model_for_pruning.built and model_for_pruning.input_shape == (None, 20)


@keras.saving.register_keras_serializable(package="tests")
class MyDenseLayer(keras.layers.Dense, tfmot.sparsity.keras.PrunableLayer):
    def get_prunable_weights(self):
        # Prune bias also, though that usually harms model accuracy too much.
        return [self.kernel, self.bias]


def test_the_guides_custom_prunable_layer(guide):
    x_train, y_train, _ = guide
    model_for_pruning = keras.Sequential(
        [
            tfmot.sparsity.keras.prune_low_magnitude(
                MyDenseLayer(20, input_shape=input_shape),
                pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.5, 0, frequency=1),
            ),
            keras.layers.Flatten(),
        ]
    )
    (wrapper,) = tl.find_wrappers(model_for_pruning)
    assert sorted(wrapper.masks) == ["bias", "kernel"]
    model_for_pruning.compile(loss=keras.losses.categorical_crossentropy, optimizer="adam")
    model_for_pruning.fit(
        x_train, y_train, epochs=1, verbose=0, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()]
    )
    assert (
        wrapper.masks["bias"].numpy().sum() == 10 and wrapper.masks["kernel"].numpy().sum() == 200
    )


@pytest.mark.tensorflow
@needs_tensorboard
def test_the_guides_training_with_callbacks(guide):
    x_train, y_train, pretrained_weights = guide
    base_model = setup_model()
    base_model.load_weights(pretrained_weights)  # optional but recommended for model accuracy
    model_for_pruning = tfmot.sparsity.keras.prune_low_magnitude(base_model)

    log_dir = tempfile.mkdtemp()
    callbacks = [
        tfmot.sparsity.keras.UpdatePruningStep(),
        # Log sparsity and other metrics in Tensorboard.
        tfmot.sparsity.keras.PruningSummaries(log_dir=log_dir),
    ]
    model_for_pruning.compile(
        loss=keras.losses.categorical_crossentropy, optimizer="adam", metrics=["accuracy"]
    )
    model_for_pruning.fit(x_train, y_train, callbacks=callbacks, epochs=2, verbose=0)
    # The default ConstantSparsity(0.5, 0) updates every 100 steps: not in 2 steps.
    (wrapper,) = tl.find_wrappers(model_for_pruning)
    assert int(wrapper.pruning_step.numpy()) == 2
    assert os.listdir(os.path.join(log_dir, "metrics")) and os.listdir(
        os.path.join(log_dir, "train")
    )


@pytest.mark.tensorflow
def test_the_guides_custom_training_loop(guide):
    import tensorflow as tf

    x_train, y_train, pretrained_weights = guide
    base_model = setup_model()
    base_model.load_weights(pretrained_weights)
    # The guide's default schedule updates at step 100; this one at every step.
    model_for_pruning = tfmot.sparsity.keras.prune_low_magnitude(
        base_model, pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.5, 0, frequency=1)
    )

    # --- the guide's loop ---
    loss = keras.losses.categorical_crossentropy
    optimizer = keras.optimizers.Adam()
    log_dir = tempfile.mkdtemp()
    unused_arg = -1
    epochs = 2
    batches = 1  # example is hardcoded so that the number of batches cannot change.

    # Non-boilerplate.
    model_for_pruning.optimizer = optimizer
    step_callback = tfmot.sparsity.keras.UpdatePruningStep()
    step_callback.set_model(model_for_pruning)
    log_callback = tfmot.sparsity.keras.PruningSummaries(log_dir=log_dir)
    log_callback.set_model(model_for_pruning)

    step_callback.on_train_begin()  # run pruning callback
    for _ in range(epochs):
        log_callback.on_epoch_begin(epoch=unused_arg)  # run pruning callback
        for _ in range(batches):
            step_callback.on_train_batch_begin(batch=unused_arg)  # run pruning callback

            with tf.GradientTape() as tape:
                logits = model_for_pruning(x_train, training=True)
                loss_value = loss(y_train, logits)
                grads = tape.gradient(loss_value, model_for_pruning.trainable_variables)
                optimizer.apply_gradients(zip(grads, model_for_pruning.trainable_variables))

        step_callback.on_epoch_end(batch=unused_arg)  # run pruning callback
    # --- end of the guide's loop ---

    (wrapper,) = tl.find_wrappers(model_for_pruning)
    pruned = wrapper.masks["kernel"].numpy() == 0
    assert pruned.mean() == 0.5 and int(wrapper.pruning_step.numpy()) == 2
    assert np.all(wrapper.layer.kernel.numpy()[pruned] == 0)
    assert os.listdir(os.path.join(log_dir, "metrics"))


def test_the_guides_checkpoint_and_deserialize_and_export(guide):
    x_train, y_train, pretrained_weights = guide
    base_model = setup_model()
    base_model.load_weights(pretrained_weights)  # optional but recommended for model accuracy
    model_for_pruning = tfmot.sparsity.keras.prune_low_magnitude(
        base_model, pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.5, 0, frequency=1)
    )
    model_for_pruning.compile(loss=keras.losses.categorical_crossentropy, optimizer="adam")
    model_for_pruning.fit(
        x_train, y_train, verbose=0, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()]
    )

    _, keras_model_file = tempfile.mkstemp(".h5")
    # Checkpoint: saving the optimizer is necessary (include_optimizer=True is the default).
    model_for_pruning.save(keras_model_file, include_optimizer=True)
    # Deserialize model.
    with tfmot.sparsity.keras.prune_scope():
        loaded_model = keras.models.load_model(keras_model_file)

    (wrapper,) = tl.find_wrappers(model_for_pruning)
    (loaded,) = tl.find_wrappers(loaded_model)
    assert isinstance(loaded, tfmot.sparsity.keras.PruneLowMagnitude)
    assert loaded.pruning_schedule.get_config() == wrapper.pruning_schedule.get_config()
    np.testing.assert_array_equal(loaded.masks["kernel"].numpy(), wrapper.masks["kernel"].numpy())
    assert int(loaded.pruning_step.numpy()) == 1

    model_for_export = tfmot.sparsity.keras.strip_pruning(model_for_pruning)
    assert not tl.find_rewind_wrappers(model_for_export)
    assert _kernel_sparsity(model_for_export.layers[0]) == 0.5
    np.testing.assert_allclose(
        model_for_export.predict(x_train, verbose=0),
        model_for_pruning.predict(x_train, verbose=0),
        atol=1e-6,
    )


def test_prune_low_magnitude_trains_on_every_backend(tmp_path):
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.DepthwiseConv2D(3, name="depthwise")(h)
    h = keras.layers.SeparableConv2D(4, 1, name="separable")(h)
    h = keras.layers.Flatten()(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(h))
    schedule = tfmot.sparsity.keras.PolynomialDecay(0.3, 0.6, begin_step=1, end_step=5, frequency=2)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    names = [w.layer.name for w in tl.find_wrappers(pruned)]
    assert names == ["conv", "separable", "out"]  # tfmot leaves depthwise kernels dense
    assert list(tl.find_wrappers(pruned)[1].masks) == ["pointwise_kernel"]
    pruned.compile(keras.optimizers.Adam(1e-2), "mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6, 6, 2)).astype("float32")
    y = rng.normal(size=(32, 3)).astype("float32")
    pruned.fit(
        x,
        y,
        batch_size=4,
        epochs=1,
        verbose=0,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
    )
    for wrapper in tl.find_wrappers(pruned):
        for masked in wrapper.masked_weights:
            mask = keras.ops.convert_to_numpy(masked.mask.value)
            assert 1 - mask.mean() == pytest.approx(0.6, abs=0.05), wrapper.layer.name
            assert np.all(keras.ops.convert_to_numpy(masked.variable.value)[mask == 0] == 0)
    path = os.path.join(tmp_path, "pruned.keras")
    pruned.save(path)
    loaded = keras.models.load_model(path)
    assert [int(w.pruning_step.numpy()) for w in tl.find_wrappers(loaded)] == [8, 8, 8]
    plain = tfmot.sparsity.keras.strip_pruning(loaded)
    np.testing.assert_allclose(plain.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-5)


class _Scale(keras.layers.Layer):
    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), name="scale")

    def call(self, x):
        return x * self.scale


def test_compat_bad_input_names_the_argument_and_changes_nothing():
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(4, name="fc")])
    before = [w.copy() for w in model.get_weights()]
    plm = tfmot.sparsity.keras.prune_low_magnitude
    cases = [
        (lambda: plm(model, pruning_policy=object()), "pruning_policy is not supported"),
        (lambda: plm(model, block_size=(2,)), "block_size"),
        (lambda: plm(model, block_pooling_type="MIN"), "block_pooling_type"),
        (lambda: plm(model, sparsity_m_by_n=(4, 4)), "sparsity_m_by_n"),
        (lambda: plm(model, sparsity_m_by_n=(2, "4")), "sparsity_m_by_n"),
        (lambda: plm(model, pruning_schedule=0.5), "pruning_schedule"),
        (lambda: plm(model, pruning_schedule=tl.EveryEpochs(2)), "pruning_schedule"),
        (lambda: tfmot.sparsity.keras.PolynomialDecay(0.2, 0.8, 100, 100), "end_step"),
        (lambda: tfmot.sparsity.keras.ConstantSparsity(1.0, 0), "target_sparsity"),
        (lambda: tfmot.sparsity.keras.ConstantSparsity(0.5, 0, frequency=0), "frequency"),
        (lambda: plm("model"), "Sequential or Functional"),
        (lambda: tfmot.sparsity.keras.strip_pruning("model"), "keras.Model"),
        (lambda: tfmot.sparsity.keras.PruningSummaries(log_dir=""), "log_dir"),
    ]
    for make, match in cases:
        with pytest.raises(ValueError, match=match):
            make()
    conv = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3, name="conv")])
    with pytest.raises(ValueError, match="block_size=\\(2, 2\\) needs 2-D weights.*conv/kernel"):
        plm(conv, block_size=(2, 2))
    # A layer it cannot prune: named, with the supported types, as tfmot does.
    custom = keras.Sequential([keras.Input((20,)), keras.layers.Dense(4), _Scale(name="scale")])
    with pytest.raises(ValueError, match="cannot prune layer 'scale' of type _Scale.*Supported"):
        plm(custom)
    with pytest.raises(ValueError, match="cannot prune layer 'scale'"):
        plm(_Scale(name="scale"))
    with pytest.raises(AttributeError, match="PruneForLatencyOnXNNPack is not supported"):
        tfmot.sparsity.keras.PruneForLatencyOnXNNPack()
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not tl.find_wrappers(model)


def test_layers_with_nothing_to_prune_are_kept_as_they_are():
    flatten, norm = keras.layers.Flatten(), keras.layers.LayerNormalization()
    dense = keras.layers.Dense(3)
    wrapped = tfmot.sparsity.keras.prune_low_magnitude([flatten, norm, dense])
    assert wrapped[:2] == [flatten, norm]
    assert isinstance(wrapped[2], tfmot.sparsity.keras.PruneLowMagnitude)
    assert wrapped[2].name == "prune_low_magnitude_" + dense.name
    x, _ = data()
    model = keras.Sequential([keras.Input((20,)), dense])
    plain = tfmot.sparsity.keras.strip_pruning(model)
    assert plain.layers[0] is dense


def test_a_functional_graph_with_an_operator_node_is_pruned():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, name="fc1")(inputs) + 1.0  # an operator node, not a layer
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(hidden))
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    pruned = tfmot.sparsity.keras.prune_low_magnitude(
        model, pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.5, 0)
    )
    wrappers = [w for w in pruned.layers if isinstance(w, tfmot.sparsity.keras.PruneLowMagnitude)]
    assert len(wrappers) == 2
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
