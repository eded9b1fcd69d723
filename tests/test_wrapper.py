"""PruneWrapper, wrap and strip on every supported layer and kind of model."""

import os

import keras
import numpy as np
import pytest
from conftest import compile_model
from conftest import data
from conftest import mlp

import tf_lottery as tl
from tf_lottery import keras_private

L = keras.layers


def _model(input_shape, *layers, dtype="float32"):
    inputs = keras.Input(input_shape, dtype=dtype)
    x = inputs
    for layer in layers:
        x = layer(x, x) if isinstance(layer, L.MultiHeadAttention) else layer(x)
    return keras.Model(inputs, L.Flatten()(x) if len(x.shape) > 2 else x)


LAYER_CASES = {
    "Dense": lambda: _model((6,), L.Dense(8)),
    "EinsumDense": lambda: _model((6,), L.EinsumDense("ab,bc->ac", output_shape=8)),
    "Conv1D": lambda: _model((8, 3), L.Conv1D(4, 3)),
    "Conv2D": lambda: _model((6, 6, 2), L.Conv2D(4, 3)),
    "Conv3D": lambda: _model((4, 4, 4, 2), L.Conv3D(4, 2)),
    "Conv1DTranspose": lambda: _model((5, 3), L.Conv1DTranspose(4, 3)),
    "Conv2DTranspose": lambda: _model((4, 4, 2), L.Conv2DTranspose(4, 3)),
    "Conv3DTranspose": lambda: _model((3, 3, 3, 2), L.Conv3DTranspose(4, 2)),
    "DepthwiseConv1D": lambda: _model((8, 4), L.DepthwiseConv1D(3, depth_multiplier=2)),
    "DepthwiseConv2D": lambda: _model((6, 6, 4), L.DepthwiseConv2D(3, depth_multiplier=2)),
    "SeparableConv1D": lambda: _model((8, 4), L.SeparableConv1D(6, 3, depth_multiplier=2)),
    "SeparableConv2D": lambda: _model((6, 6, 4), L.SeparableConv2D(6, 3, depth_multiplier=2)),
    "Embedding": lambda: _model((5,), L.Embedding(20, 8), dtype="int32"),
    "MultiHeadAttention": lambda: _model((5, 8), L.MultiHeadAttention(2, 4)),
    "SimpleRNN": lambda: _model((5, 4), L.SimpleRNN(6)),
    "LSTM": lambda: _model((5, 4), L.LSTM(6)),
    "GRU": lambda: _model((5, 4), L.GRU(6)),
}

EXPECTED_WEIGHTS = {
    "SeparableConv1D": {"depthwise_kernel", "pointwise_kernel"},
    "SeparableConv2D": {"depthwise_kernel", "pointwise_kernel"},
    "Embedding": {"embeddings"},
    "MultiHeadAttention": {"query/kernel", "key/kernel", "value/kernel", "attention_output/kernel"},
    "SimpleRNN": {"simple_rnn_cell/kernel", "simple_rnn_cell/recurrent_kernel"},
    "LSTM": {"lstm_cell/kernel", "lstm_cell/recurrent_kernel"},
    "GRU": {"gru_cell/kernel", "gru_cell/recurrent_kernel"},
}


def _inputs(model, n=4):
    shape = (n,) + tuple(model.input_shape[1:])
    if model.inputs[0].dtype.startswith("int"):
        return np.random.default_rng(0).integers(0, 20, size=shape).astype("int32")
    return np.random.default_rng(0).normal(size=shape).astype("float32")


@pytest.mark.parametrize("kind", sorted(LAYER_CASES))
def test_every_layer_type_reaches_the_asked_sparsity(kind):
    model = tl.wrap(LAYER_CASES[kind]())
    (wrapper,) = tl.find_wrappers(model)
    assert type(wrapper.layer).__name__ == kind
    assert set(wrapper.masks) == EXPECTED_WEIGHTS.get(kind, {"kernel"})
    tl.prune(model, tl.PruneFraction(0.5, output_rate=0.5))
    for masked in wrapper.masked_weights:
        size = masked.mask.numpy().size
        assert masked.mask.numpy().sum() == size - round(0.5 * size)
        kernel = masked.variable.numpy()
        assert np.all(kernel[masked.mask.numpy() == 0] == 0)
    report = tl.sparsity(model)
    assert report.sparsity == pytest.approx(0.5, abs=0.02)
    # It still trains, and what was pruned stays pruned.
    x = _inputs(model, 16)
    y = np.random.default_rng(1).normal(size=(16,) + tuple(model.output_shape[1:]))
    model.compile("adam", "mse")
    model.fit(x, y, epochs=1, verbose=0)
    for masked in wrapper.masked_weights:
        assert np.all(masked.variable.numpy()[masked.mask.numpy() == 0] == 0)


def test_a_shared_layer_gets_one_mask():
    shared = L.Dense(4, name="shared")
    inputs = keras.Input((4,))
    outputs = L.Dense(2, name="out")(shared(shared(inputs)))
    wrapped = tl.wrap(keras.Model(inputs, outputs))
    assert [w.layer.name for w in tl.find_wrappers(wrapped)] == ["shared", "out"]
    tl.prune(wrapped, tl.PruneFraction(0.5))
    x = np.ones((2, 4), "float32")
    assert np.isfinite(wrapped.predict(x, verbose=0)).all()


def test_embedding_mask_reaches_the_lstm():
    inputs = keras.Input((None,), dtype="int32")
    x = L.Embedding(10, 4, mask_zero=True, name="emb")(inputs)
    outputs = L.LSTM(3, name="lstm")(x)
    model = keras.Model(inputs, outputs)
    wrapped = tl.wrap(model)
    padded = np.array([[1, 2, 0, 0, 0]], "int32")
    np.testing.assert_allclose(
        model.predict(padded, verbose=0), wrapped.predict(padded, verbose=0), rtol=1e-6
    )
    # The padding is masked, not read: the output equals that of the unpadded input.
    unpadded = np.array([[1, 2]], "int32")
    np.testing.assert_allclose(
        wrapped.predict(padded, verbose=0), wrapped.predict(unpadded, verbose=0), rtol=1e-5
    )


class SubclassedMLP(keras.Model):
    def __init__(self, hidden=8, **kwargs):
        super().__init__(**kwargs)
        self.hidden = hidden
        self.fc1 = tl.PruneWrapper(L.Dense(hidden, activation="relu", name="fc1"))
        self.out = tl.PruneWrapper(L.Dense(3, name="out"))

    def call(self, x):
        return self.out(self.fc1(x))

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden}


keras.saving.register_keras_serializable(package="tests")(SubclassedMLP)


def test_subclassed_model_prunes_trains_and_strips():
    model = compile_model(SubclassedMLP())
    x, y = data()
    model.fit(
        x, y, epochs=2, verbose=0, callbacks=[tl.IterativePruning(tl.PruneFraction(0.5), verbose=0)]
    )
    assert tl.sparsity(model)["fc1"].sparsity == 0.75
    plain = tl.strip(model)
    assert not tl.find_wrappers(plain)
    assert [type(layer).__name__ for layer in tl.keras_private.flatten_layers(plain)] == [
        "Dense",
        "Dense",
    ]
    np.testing.assert_allclose(
        plain.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )


def _wrapped_sequential():
    return keras.Sequential(
        [keras.Input((20,)), tl.PruneWrapper(L.Dense(16, "relu")), tl.PruneWrapper(L.Dense(3))]
    )


def _wrapped_functional():
    inputs = keras.Input((20,))
    hidden = tl.PruneWrapper(L.Dense(16, "relu"))(inputs)
    return keras.Model(inputs, tl.PruneWrapper(L.Dense(3))(hidden))


def _subclassed_built_by_a_call():
    model = SubclassedMLP()
    model(data(2)[0])
    return model


def _subclassed_built_by_fit():
    return SubclassedMLP()


BUILDS = {
    "wrap": lambda: tl.wrap(mlp()),
    "sequential": _wrapped_sequential,
    "functional": _wrapped_functional,
    "subclassed_call": _subclassed_built_by_a_call,
    "subclassed_fit": _subclassed_built_by_fit,
}


@pytest.mark.parametrize("build", sorted(BUILDS))
def test_initial_weights_are_the_fresh_weights_and_a_rewind_lands_on_them(build):
    model = compile_model(BUILDS[build]())
    x, y = data()
    first = {}

    class RecordFirstWeights(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            # On TensorFlow an unbuilt subclassed model is built by the first
            # step, after this; the rewind check below still covers it.
            for w in tl.find_wrappers(self.model):
                for saved in w.saved_weights:
                    np.testing.assert_array_equal(saved.initial.numpy(), saved.variable.numpy())
                    first[(w.name, saved.name)] = saved.initial.numpy()

    pruning = tl.IterativePruning(tl.PruneFraction(0.5), rewind="init", verbose=0)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[RecordFirstWeights(), pruning])
    assert pruning.rounds_done == 1
    assert first or build == "subclassed_fit"
    for w in tl.find_wrappers(model):
        for saved in w.saved_weights:
            initial = saved.initial.numpy()
            if (w.name, saved.name) in first:
                np.testing.assert_array_equal(initial, first[(w.name, saved.name)])
            mask = np.ones_like(initial) if saved.mask is None else saved.mask.numpy()
            np.testing.assert_array_equal(saved.variable.numpy(), initial * mask)
            if saved.name == "kernel":
                assert np.count_nonzero(initial) == initial.size, "θ0 has zeros"
                assert np.count_nonzero(saved.variable.numpy()) == mask.sum()


def test_keras_round_trip_keeps_masks_initial_weights_and_rewind_point(tmp_path):
    wrapped = compile_model(tl.wrap(mlp()))
    x, y = data()
    callback = tl.IterativePruning(tl.PruneFraction(0.5), every=2, rewind=1, verbose=0)
    wrapped.fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    path = os.path.join(tmp_path, "m.keras")
    wrapped.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(tl.find_wrappers(wrapped), tl.find_wrappers(loaded)):
        for va, vb in zip(a.weights, b.weights):
            np.testing.assert_array_equal(va.numpy(), vb.numpy())
        assert int(b.pruning_round.numpy()) == 1 and int(b.rewind_epoch.numpy()) == 1
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), wrapped.predict(x, verbose=0))


def test_weights_h5_round_trip(tmp_path):
    wrapped = tl.wrap(mlp())
    tl.prune(wrapped, tl.PruneFraction(0.5))
    path = os.path.join(tmp_path, "m.weights.h5")
    wrapped.save_weights(path)
    other = tl.wrap(mlp())
    other.load_weights(path)
    for a, b in zip(wrapped.weights, other.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_no_threshold_reads_as_nan_but_no_variable_holds_nan():
    # Multi-process JAX refuses to put a NaN on its devices (NaN != NaN in its
    # same-value-in-every-process check), so "no threshold" is stored as -inf.
    from tf_lottery.masking import read_threshold

    wrapped = tl.wrap(mlp())
    thresholds = [m.threshold for w in tl.find_wrappers(wrapped) for m in w.masked_weights]
    assert all(np.isnan(read_threshold(t)) for t in thresholds)
    # A rate too small to prune a single weight: the round has no threshold.
    assert all(np.isnan(t) for t in tl.prune(wrapped, tl.PruneFraction(0.001)).values())
    assert all(np.isnan(read_threshold(t)) for t in thresholds)
    assert not any(np.isnan(keras.ops.convert_to_numpy(v.value)).any() for v in wrapped.weights)
    thresholds_used = tl.prune(wrapped, tl.PruneFraction(0.5))
    assert [read_threshold(t) for t in thresholds] == list(thresholds_used.values())


def test_wrapper_get_config_round_trip():
    wrapper = tl.PruneWrapper(L.Dense(4, name="fc"), name="pw")
    clone = tl.PruneWrapper.from_config(wrapper.get_config())
    assert clone.name == "pw" and clone.layer.name == "fc"
    assert clone.get_config() == wrapper.get_config()


def test_bad_input_to_wrap_and_wrapper():
    model = mlp()
    with pytest.raises(ValueError, match="exclude.*nope"):
        tl.wrap(model, exclude=["nope"])
    with pytest.raises(ValueError, match="nothing to prune"):
        tl.wrap(model, exclude=["fc1", "out"])
    with pytest.raises(ValueError, match="nothing to prune"):
        tl.wrap(keras.Sequential([keras.Input((4,)), L.BatchNormalization(), L.Dropout(0.1)]))
    wrapped = tl.wrap(model)
    with pytest.raises(ValueError, match="already contains PruneWrapper"):
        tl.wrap(wrapped)
    with pytest.raises(ValueError, match="no prunable weights"):
        tl.PruneWrapper(L.BatchNormalization())
    with pytest.raises(ValueError, match="already wrapped"):
        tl.PruneWrapper(tl.find_wrappers(wrapped)[0])
    with pytest.raises(ValueError, match="subclassed"):
        tl.wrap(SubclassedMLP())
    with pytest.raises(ValueError, match="no PruneWrapper"):
        tl.strip(model)
    with pytest.raises(ValueError, match="needs a model with PruneWrapper layers"):
        tl.prune(model, tl.PruneFraction(0.2))


def test_sparsity_report_prints_a_table():
    wrapped = tl.wrap(mlp())
    tl.prune(wrapped, tl.PruneFraction(0.5))
    text = str(tl.sparsity(wrapped))
    assert "fc1" in text and "out" in text and "total" in text
    report = tl.sparsity(wrapped).to_dict()
    assert report["layers"][0]["sparsity"] == 0.5


def test_the_pruning_step_is_saved_and_files_without_it_still_load(tmp_path):
    # keep="both": the variables of the older layouts, which held θ0 and a rewind point.
    model = tl.wrap(mlp(), keep="both")
    for wrapper in tl.find_wrappers(model):
        wrapper.pruning_step.assign(7)
    tl.prune(model, tl.PruneFraction(0.5))
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert [int(w.pruning_step.numpy()) for w in tl.find_wrappers(loaded)] == [7, 7]
    # A file written before pruning_step existed lacks it and pruning_stage, the
    # last two variables of each wrapper.
    fresh = _loaded_without_last(tl.find_wrappers(model)[0], 2)
    assert int(fresh.pruning_step.numpy()) == 0


def _rebuilt_from_a_layout_1_config(wrapper):
    """`wrapper` rebuilt as loading does from a file written before layout 2: its
    config has no layout_version, and its store every variable the wrapper tracks."""
    config = wrapper.get_config()
    del config["layout_version"]
    rebuilt = type(wrapper).from_config(config)
    rebuilt.build_from_config(wrapper.get_build_config())
    return rebuilt


def _loaded_without_last(source, count):
    """A fresh wrapper loaded from `source`'s variables less the last `count`, as an older
    file holds them; its masks must load as written."""
    own = keras_private.own_variables(source)[:-count]
    fresh = _rebuilt_from_a_layout_1_config(tl.find_wrappers(tl.wrap(mlp()))[0])
    fresh.load_own_variables({str(i): v.numpy() for i, v in enumerate(own)})
    np.testing.assert_array_equal(fresh.masks["kernel"].numpy(), source.masks["kernel"].numpy())
    return fresh


def test_the_pruning_stage_is_saved_and_files_without_it_still_load(tmp_path):
    model = tl.wrap(mlp(), keep="both")  # the older layouts' copies, as above
    tl.prune(model, tl.PruneFraction(0.5))
    for wrapper in tl.find_wrappers(model):
        wrapper.pruning_step.assign(7)
        wrapper.pruning_stage.assign([12345, 1])
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert [w.pruning_stage.numpy().tolist() for w in tl.find_wrappers(loaded)] == [[12345, 1]] * 2
    # A file written before pruning_stage existed has one variable less per wrapper.
    fresh = _loaded_without_last(tl.find_wrappers(model)[0], 1)
    assert int(fresh.pruning_step.numpy()) == 7
    assert fresh.pruning_stage.numpy().tolist() == [0, 0]


@keras.saving.register_keras_serializable(package="test_wrapper")
class TrainingDoubles(L.Dense):
    """A Dense layer whose output doubles in training: it reads the training flag."""

    def call(self, inputs, training=None):
        outputs = super().call(inputs)
        return outputs * 2.0 if training else outputs


def test_a_wrapped_layer_gets_the_training_flag_and_keeps_its_activity_regularizer():
    # On PyTorch the wrapper runs its layer's call without a second
    # Layer.__call__ where nothing is lost: the training flag must still reach
    # the layer, and a layer with an activity regularizer (which only __call__
    # applies) must keep it.
    x = np.random.default_rng(0).normal(size=(3, 5)).astype("float32")
    doubles = tl.wrap(_model((5,), TrainingDoubles(4)))
    inference = keras.ops.convert_to_numpy(doubles(x, training=False))
    training = keras.ops.convert_to_numpy(doubles(x, training=True))
    np.testing.assert_allclose(training, 2 * inference, rtol=1e-6)
    plain = _model((5,), L.Dense(4, activity_regularizer=keras.regularizers.L2(1.0)))
    plain(x)
    # The plain model's own loss: Keras 3.15 divides it by the batch size, 3.4 does not.
    expected = float(keras.ops.convert_to_numpy(plain.losses[0]))
    wrapped = tl.wrap(plain)
    wrapped(x)
    assert len(wrapped.losses) == 1
    np.testing.assert_allclose(
        float(keras.ops.convert_to_numpy(wrapped.losses[0])), expected, rtol=1e-5
    )
