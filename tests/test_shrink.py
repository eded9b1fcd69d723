"""shrink: weights copied by position, constants folded where the reader has no bias."""

import keras
import numpy as np
import pytest

import tf_lottery as tl
from tf_lottery.structured.shrink import ShrinkWarning

L = keras.layers


def _numpy(variable):
    return keras.ops.convert_to_numpy(variable.value)


def _assert_same_predictions(small, model, x):
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(small(x, training=False)),
        keras.ops.convert_to_numpy(model(x, training=False)),
        atol=1e-5,
    )


def _zero_columns(layer, columns):
    kernel = _numpy(layer.kernel)
    kernel[..., columns] = 0
    layer.kernel.assign(kernel)


def _x(model, n=16, seed=1):
    shape = (n, *model.input_shape[1:])
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


class _Scale(L.Layer):
    """A per-channel scale whose weight has no name, as ConvNeXt's LayerScale."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.scale


def test_shrink_copies_multi_head_attention_weights_whose_sublayers_share_names():
    inputs = keras.Input((5, 8))
    x = L.MultiHeadAttention(4, 8, name="mha")(inputs, inputs)
    x = L.Dense(6, activation="relu", name="fc")(L.Flatten()(x))
    model = keras.Model(inputs, L.Dense(2, name="out")(x))
    _zero_columns(model.get_layer("fc"), [2])
    model.get_layer("fc").bias.assign(np.zeros(6))
    small = tl.shrink(model)
    assert small.get_layer("fc").units == 5
    _assert_same_predictions(small, model, _x(model))


def test_shrink_copies_a_weight_added_without_a_name():
    inputs = keras.Input((6,))
    x = _Scale(name="scale")(L.Dense(4, name="fc1")(inputs))
    model = keras.Model(inputs, L.Dense(2, name="out")(L.Dense(5, name="fc2")(x)))
    model.get_layer("scale").scale.assign(np.arange(1.0, 5.0))
    _zero_columns(model.get_layer("fc2"), [0, 3])
    model.get_layer("fc2").bias.assign(np.zeros(5))
    small = tl.shrink(model)
    assert small.get_layer("fc2").units == 3
    np.testing.assert_array_equal(_numpy(small.get_layer("scale").scale), np.arange(1.0, 5.0))
    _assert_same_predictions(small, model, _x(model))


def _conv_bn_conv_bn():
    """Issue #22's repro: Conv(no bias) → BN (moving mean −0.5) → ReLU → 1x1 Conv(no bias) → BN."""
    inputs = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 3, use_bias=False, name="c1")(inputs)
    x = L.ReLU()(L.BatchNormalization(name="bn1")(x))
    x = L.BatchNormalization(name="bn2")(L.Conv2D(5, 1, use_bias=False, name="c2")(x))
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, L.Dense(2, name="out")(x))
    model.get_layer("bn1").moving_mean.assign(np.full(4, -0.5))
    return model


def test_shrink_folds_a_constant_unit_into_a_reader_without_bias():
    model = _conv_bn_conv_bn()
    _zero_columns(model.get_layer("c1"), [1])  # unit 1 outputs relu(BN(0)) = 0.5 · γ/σ
    small = tl.shrink(model)
    assert small.get_layer("c1").filters == 3
    bias = _numpy(small.get_layer("c2").bias)
    assert np.all(bias != 0)
    _assert_same_predictions(small, model, _x(model))


@pytest.mark.tensorflow
def test_export_converts_unshrunk_with_a_note_when_shrink_fails(tmp_path, monkeypatch):
    model = _conv_bn_conv_bn()
    _zero_columns(model.get_layer("c1"), [1])

    def failing_shrink(*args, **kwargs):
        raise RuntimeError("predictions differ")

    monkeypatch.setattr("tf_lottery.export.tflite.shrink_model", failing_shrink)
    report = tl.export_tflite(model, str(tmp_path / "m.tflite"))
    assert report.shrink is None
    assert any("shrink() failed" in n and "predictions differ" in n for n in report.notes)
    x = _x(model)
    np.testing.assert_allclose(
        tl.run_tflite(report.path, x), model.predict(x, verbose=0), atol=1e-4
    )


@pytest.mark.tensorflow
def test_export_passes_on_what_shrink_left_alone_by_its_warning_category(tmp_path):
    inputs = keras.Input((6,))
    kept = L.Lambda(lambda t: t * 2.0, name="double")(L.Dense(8, name="fc1")(inputs))
    x = L.Dense(4, name="fc2")(L.Dense(8, name="fc3")(inputs))
    model = keras.Model(inputs, L.Dense(2, name="out")(L.Concatenate()([kept, x])))
    _zero_columns(model.get_layer("fc3"), [0, 1, 2])
    with pytest.warns(ShrinkWarning, match="layer 'double'"):
        assert tl.shrink(model).get_layer("fc3").units == 5
    report = tl.export_tflite(model, str(tmp_path / "m.tflite"))
    assert report.shrink["fc3"].units_after == 5
    assert [n for n in report.notes if "layer 'double'" in n][0].startswith("shrink() leaves")


@pytest.mark.tensorflow
def test_export_removes_the_units_shrink_removes_before_a_randomly_sparse_dense(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = L.GlobalAveragePooling2D()(L.Conv2D(32, 3, activation="relu", name="conv")(inputs))
    model = tl.wrap(keras.Model(inputs, L.Dense(10, name="out")(x)))
    tl.prune(model, tl.UnitNorm(0.25))
    tl.prune(model, tl.PruneFraction(0.8))
    filters = tl.shrink(model).get_layer("conv").filters
    assert filters < 32
    report = tl.export_tflite(model, str(tmp_path / "m.tflite"))
    assert report.shrink is not None and report.shrink["conv"].units_after == filters


def test_shrink_keeps_whole_blocks_of_a_block_sparse_dense_when_aligned():
    inputs = keras.Input((8,))
    x = L.Dense(8, name="fc1")(inputs)
    model = keras.Model(inputs, L.Dense(3, name="out")(x))
    fc1, out = model.get_layer("fc1"), model.get_layer("out")
    _zero_columns(fc1, [0, 1, 2, 3, 5])
    fc1.bias.assign(np.zeros(8))
    kernel = _numpy(out.kernel)
    kernel[0:4, 0] = 0  # one whole 4x1 block: 4 of 24 weights
    kernel[4:8, 1:] = 0  # two more
    out.kernel.assign(kernel)
    assert tl.shrink(model).get_layer("fc1").units == 3
    assert tl.shrink(model, align=4).get_layer("fc1").units == 4  # unit 5 would split a block


@pytest.mark.tensorflow
def test_a_failed_int8_check_says_whether_quantization_or_pruning_lost_it(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = inputs
    for i in range(3):
        x = L.ReLU()(L.BatchNormalization(name=f"bn{i}")(L.Conv2D(16, 3, name=f"c{i}")(x)))
    x = L.Dense(16, activation="relu", name="fc")(L.Flatten()(x))
    unpruned = keras.Model(inputs, L.Dense(10, name="out")(x))
    model = tl.wrap(unpruned)
    tl.prune(model, tl.UnitNorm(0.25))
    x = _x(unpruned, n=200)
    x[150:] *= 4  # the held-out quarter goes beyond the calibrated ranges
    path = str(tmp_path / "m.tflite")
    with pytest.raises(tl.ExportError, match="pass unpruned=") as plain:
        tl.export_tflite(model, path, quantize="int8", representative_data=x)
    with pytest.raises(tl.ExportError, match="the loss comes from quantization, not from pruning"):
        tl.export_tflite(
            model,
            path,
            quantize="int8",
            representative_data=x,
            unpruned=unpruned,
        )
    assert "calibrated on the other 150 of 200 inputs" in str(plain.value)
    with pytest.raises(ValueError, match="unpruned"):
        tl.export_tflite(model, path, quantize="int8", representative_data=x, unpruned="m.keras")


def test_shrink_refuses_bad_arguments_by_name():
    model = _conv_bn_conv_bn()
    for bad in (0, -4, 2.0, True, "16"):
        with pytest.raises(ValueError, match=f"align to be a positive integer.*align={bad!r}"):
            tl.shrink(model, align=bad)
    with pytest.raises(ValueError, match="verbose to be 0 or 1.*verbose=2"):
        tl.shrink(model, verbose=2)
