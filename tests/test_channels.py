"""Channel groups through the parts of modern CNNs, and shrink on them."""

import warnings

import keras
import numpy as np
import pytest

import tf_lottery as tl
from tf_lottery.structured.channels import channel_groups
from tf_lottery.keras_private import LayerScale

L = keras.layers


def _numpy(variable):
    return keras.ops.convert_to_numpy(variable.value)


def _predict(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def _groups(model):
    return {g.name: g for g in channel_groups(model)}


def _x(model, n=16, seed=1):
    shape = (n, *model.input_shape[1:])
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _batchnorm_statistics(model, seed=0):
    """Non-trivial moving statistics, γ and β, so that a dropped fold shows."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            size = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.5, size))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, size))
            layer.gamma.assign(rng.uniform(0.5, 1.5, size))
            layer.beta.assign(rng.normal(0, 0.5, size))


def _shrinks_exactly(model, x=None):
    """Wraps, prunes half the units, shrinks without a warning; returns (wrapped, small)."""
    wrapped = tl.wrap(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        tl.prune(wrapped, tl.UnitNorm(0.5))
        small = tl.shrink(wrapped)
    x = _x(model) if x is None else x
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(small(x, training=False)),
        keras.ops.convert_to_numpy(wrapped(x, training=False)),
        atol=1e-5,
    )
    return wrapped, small


def _hard_sigmoid(x):
    return L.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)  # MobileNetV3's, in operator nodes


def _squeeze_excite_cnn(style):
    """expand 1x1 → BN → depthwise → BN → squeeze-excite → project 1x1, as MobileNetV3
    (`style="v3"`: keepdims pooling, hard sigmoid of operator nodes) or EfficientNet
    (`"efficientnet"`: pooling, Reshape((1, 1, C)), sigmoid)."""
    inputs = keras.Input((8, 8, 4))
    x = L.Conv2D(16, 1, use_bias=False, name="expand")(inputs)
    x = L.Activation("swish")(L.BatchNormalization(name="bn1")(x))
    x = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = L.Activation("swish")(L.BatchNormalization(name="bn2")(x))
    if style == "v3":
        s = L.GlobalAveragePooling2D(keepdims=True)(x)
        s = L.Conv2D(8, 1, activation="relu", name="squeeze")(s)
        s = _hard_sigmoid(L.Conv2D(16, 1, name="excite")(s))
    else:
        s = L.Reshape((1, 1, 16))(L.GlobalAveragePooling2D()(x))
        s = L.Conv2D(8, 1, activation="swish", name="squeeze")(s)
        s = L.Conv2D(16, 1, activation="sigmoid", name="excite")(s)
    x = L.Multiply()([x, s])
    x = L.BatchNormalization(name="bn3")(L.Conv2D(8, 1, use_bias=False, name="project")(x))
    x = L.Dense(12, activation="relu", name="fc")(L.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, L.Dense(3, name="out")(x))
    _batchnorm_statistics(model)
    return model


@pytest.mark.parametrize("style", ["v3", "efficientnet"])
def test_squeeze_excite_joins_the_gate_to_the_channels_it_scales_and_shrinks_exactly(style):
    model = _squeeze_excite_cnn(style)
    groups = _groups(model)
    gated = groups["expand+excite"]
    assert gated.prunable and gated.size == 16
    assert sorted(f.name for f, _ in gated.followers) == ["bn1", "bn2", "dw"]
    assert sorted(c.layer.name for c in gated.consumers) == ["project", "squeeze"]
    assert groups["squeeze"].prunable and groups["project"].prunable
    _, small = _shrinks_exactly(model)
    assert small.get_layer("expand").filters == 8 and small.get_layer("excite").filters == 8
    assert small.get_layer("squeeze").filters == 4 and small.get_layer("project").filters == 4


def test_across_squeeze_excite_a_constant_unit_stays_and_a_zero_unit_goes():
    model = _squeeze_excite_cnn("v3")
    kernel = _numpy(model.get_layer("expand").kernel)
    kernel[..., [0, 1]] = 0  # both units output a constant: BN(0) ...
    model.get_layer("expand").kernel.assign(kernel)
    for name in ("bn1", "bn2"):  # ... unit 1's is zero, as a unit criterion leaves it
        bn = model.get_layer(name)
        gamma, beta = _numpy(bn.gamma), _numpy(bn.beta)
        gamma[1], beta[1] = 0.0, 0.0
        bn.gamma.assign(gamma)
        bn.beta.assign(beta)
    small = tl.shrink(model)
    # The constant of unit 0 is scaled by an input-dependent gate: it cannot be folded.
    assert small.get_layer("expand").filters == 15
    x = _x(model)
    np.testing.assert_allclose(_predict(small, x), _predict(model, x), atol=1e-5)


def test_operator_nodes_are_followed_and_their_constants_folded():
    inputs = keras.Input((6,))
    x = L.Dense(8, name="fc1")(inputs)
    x = keras.ops.relu6(x + 3.0) * keras.ops.hard_sigmoid(x)
    x = keras.ops.clip(x, -1.0, 2.0) - 0.5
    model = keras.Model(inputs, L.Dense(2, name="out")(L.Dense(5, name="fc2")(x)))
    assert _groups(model)["fc1"].prunable
    fc1 = model.get_layer("fc1")
    kernel = _numpy(fc1.kernel)
    kernel[:, [2, 5]] = 0
    fc1.kernel.assign(kernel)
    fc1.bias.assign(np.linspace(-1, 1, 8))  # units 2 and 5 are constants, not zero
    small = tl.shrink(model)
    assert small.get_layer("fc1").units == 6
    x = _x(model)
    np.testing.assert_allclose(_predict(small, x), _predict(model, x), atol=1e-5)


def test_layer_scale_follows_its_channels_and_layer_normalization_blocks_them():
    inputs = keras.Input((4, 4, 6))
    x = L.Dense(16, activation="gelu", name="up")(inputs)
    x = LayerScale(0.5, 8, name="scale")(L.Dense(8, name="down")(x))
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(4, name="fc")(x)
    model = keras.Model(inputs, L.Dense(2, name="out")(L.LayerNormalization(name="ln")(x)))
    model.get_layer("scale").gamma.assign(np.linspace(0.5, 2, 8))
    groups = _groups(model)
    assert [f.name for f, _ in groups["down"].followers] == ["scale"]
    assert groups["up"].prunable and groups["down"].prunable
    assert not groups["fc"].prunable and "normalizes over the channels" in groups["fc"].blocked[0]
    assert groups["fc"].blocked[0].kind is None  # known: no warning
    _, small = _shrinks_exactly(model)
    assert small.get_layer("scale").projection_dim == 4 and small.get_layer("up").units == 8
    assert small.get_layer("fc").units == 4


def test_depthwise_grouped_conv_normalization_and_rescaling_follow_their_channels():
    inputs = keras.Input((6, 6, 3))
    x = L.Rescaling(1 / 255.0)(inputs)
    x = L.Conv2D(8, 1, name="c1")(x)
    x = L.Conv2D(8, 3, padding="same", groups=8, name="grouped_dw")(x)
    x = L.Normalization(name="norm")(x)
    x = L.Conv2D(6, 1, name="c2")(x)
    model = keras.Model(inputs, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(x)))
    norm = model.get_layer("norm")
    norm.adapt(np.random.default_rng(0).normal(2, 3, (16, 6, 6, 8)).astype("float32"))
    group = _groups(model)["c1"]
    assert group.prunable and [f.name for f, _ in group.followers] == ["grouped_dw", "norm"]
    wrapped, small = _shrinks_exactly(model)
    assert small.get_layer("c1").filters == 4
    assert small.get_layer("grouped_dw").filters == small.get_layer("grouped_dw").groups == 4
    kept = _numpy(wrapped.get_layer("prune_c1").unit_mask) > 0
    means = [_numpy(layer.weights[0]) for layer in (norm, small.get_layer("norm"))]
    assert norm.weights[0].name == "mean" and means[1].shape == (4,)
    np.testing.assert_allclose(means[1], means[0][kept])


def test_an_unknown_layer_kind_warns_once_for_all_its_groups():
    inputs = keras.Input((6,))
    x = inputs
    for i in range(3):
        x = L.Dense(8, name=f"fc{i}")(x)
        x = L.Lambda(lambda t: t * 2.0, name=f"double{i}")(x)
    model = keras.Model(inputs, L.Dense(2, name="out")(L.Dense(4, name="last")(x)))
    kernel = _numpy(model.get_layer("last").kernel)
    kernel[:, 0] = 0
    model.get_layer("last").kernel.assign(kernel)
    model.get_layer("last").bias.assign(np.zeros(4))
    with pytest.warns(UserWarning) as caught:
        tl.shrink(model)
    messages = [str(w.message) for w in caught if "Lambda" in str(w.message)]
    assert len(messages) == 1
    assert "layer 'double0' (Lambda)" in messages[0]
    assert "2 more groups, reaching 2 more such layers: 'double1', 'double2'" in messages[0]
    with pytest.warns(UserWarning) as caught:
        tl.prune(tl.wrap(model), tl.UnitNorm(0.5))
    assert len([w for w in caught if "Lambda" in str(w.message)]) == 1


def test_a_grouped_convolution_loses_as_many_channels_from_every_group():
    inputs = keras.Input((6, 6, 3))
    x = L.Conv2D(8, 1, name="c1")(inputs)
    x = L.Conv2D(8, 3, groups=2, name="grouped")(x)
    x = L.Conv2D(4, 1, name="c2")(x)
    model = keras.Model(inputs, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(x)))
    for name, dead in (("c1", [0, 1, 4, 5]), ("grouped", [0, 5, 6])):
        layer = model.get_layer(name)
        kernel = _numpy(layer.kernel)
        kernel[..., dead] = 0
        layer.kernel.assign(kernel)
        layer.bias.assign(np.zeros(8))
    assert _groups(model)["c1"].prunable and _groups(model)["grouped"].prunable
    small = tl.shrink(model)
    # c1: two channels from each group of 'grouped'; 'grouped' itself: one of each
    # group's outputs (its third dead unit, in group 1, stays).
    assert small.get_layer("c1").filters == 4 and small.get_layer("grouped").filters == 6
    assert tuple(small.get_layer("grouped").kernel.shape) == (3, 3, 2, 6)
    x = _x(model)
    np.testing.assert_allclose(_predict(small, x), _predict(model, x), atol=1e-5)


class _ChannelScale(L.Layer):
    """A user's layer: one weight per channel, multiplied in; the library knows nothing of it."""

    def build(self, input_shape):
        self.gamma = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="gamma")

    def call(self, x):
        return x * self.gamma


def _with_channel_scale():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="conv1")(inputs)
    x = _ChannelScale(name="scale")(x)
    x = L.Conv2D(4, 3, padding="same", name="conv2")(x)
    model = keras.Model(inputs, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(x)))
    scale = model.get_layer("scale")
    scale.gamma.assign(np.linspace(0.5, 2.0, 8).astype("float32"))
    return model


def test_a_users_layer_joins_the_layer_table_with_one_entry(monkeypatch):
    from tf_lottery import registry

    model = tl.wrap(_with_channel_scale())
    assert _groups(model)["conv1"].blocked
    with pytest.warns(UserWarning, match=r"'scale' \(_ChannelScale\) reads them"):
        tl.prune(model, tl.UnitNorm(0.5), layers=["conv1"])
    assert _numpy(tl.find_wrappers(model)[0].unit_mask).all()
    monkeypatch.setattr(registry, "_TABLE", dict(registry._TABLE))  # undone after the test
    tl.register_layer(
        _ChannelScale,
        tl.LayerKind(channels="follow", per_channel=lambda layer, rank: {"gamma": 0}),
    )
    tl.prune(model, tl.UnitNorm(0.5), layers=["conv1"])
    group = _groups(model)["conv1"]
    assert not group.blocked and [f.name for f, _ in group.followers] == ["scale"]
    small = tl.shrink(model)  # checks its own predictions
    assert small.get_layer("conv1").filters == 4
    kept = np.flatnonzero(_numpy(tl.find_wrappers(model)[0].unit_mask))
    np.testing.assert_array_equal(
        _numpy(small.get_layer("scale").gamma), np.linspace(0.5, 2.0, 8)[kept].astype("float32")
    )


class _Projection(L.Layer):
    """A user's Dense: a kernel [in, out] and a bias; the library knows nothing of it."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

    def call(self, x):
        return keras.ops.matmul(x, self.kernel) + self.bias

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@pytest.mark.parametrize("kernel_input", ["rows", "channels"])
def test_a_users_producer_says_how_its_kernel_reads_a_flattened_input(monkeypatch, kernel_input):
    from tf_lottery import registry

    monkeypatch.setattr(registry, "_TABLE", dict(registry._TABLE))  # undone after the test
    tl.register_layer(
        _Projection,
        tl.LayerKind(
            prunable=("kernel",), channels="produce", units="units", kernel_input=kernel_input
        ),
    )
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 3))
    x = L.Flatten()(L.Conv2D(8, 3, padding="same", name="conv")(inputs))
    model = tl.wrap(keras.Model(inputs, L.Dense(2, name="out")(_Projection(6, name="proj")(x))))
    if kernel_input == "channels":  # a kernel read per channel cannot take 16 positions of each
        assert _groups(model)["conv"].blocked
        return
    tl.prune(model, tl.UnitNorm(0.5), layers=["conv"])
    small = tl.shrink(model)  # checks its own predictions
    kept = np.flatnonzero(_numpy(tl.find_wrappers(model)[0].unit_mask))
    assert small.get_layer("conv").filters == 4
    # Row p * 8 + c of the kernel reads channel c at position p: 16 positions, 4 channels kept.
    rows = [p * 8 + c for p in range(16) for c in kept]
    proj = [w for w in tl.find_wrappers(model) if w.target_name == "proj"][0].layer
    np.testing.assert_array_equal(_numpy(small.get_layer("proj").kernel), _numpy(proj.kernel)[rows])


@pytest.mark.parametrize(
    "call, words",
    [
        (
            lambda: tl.LayerKind(channels="produce", units="units", kernel_input="cols"),
            "Received: kernel_input='cols'",
        ),
        (
            lambda: tl.LayerKind(channels="pass", kernel_input="rows"),
            "Received: kernel_input='rows'",
        ),
        (lambda: tl.register_layer("Scale", tl.LayerKind()), "Received: cls='Scale'"),
        (lambda: tl.register_layer(_ChannelScale, {"channels": "pass"}), "Received: kind="),
        (lambda: tl.LayerKind(channels="scale"), "Received: channels='scale'"),
        (lambda: tl.LayerKind(channels="produce"), "Received: units=None"),
        (lambda: tl.LayerKind(channels="follow"), "Received: per_channel=None"),
    ],
)
def test_a_bad_layer_table_entry_names_the_argument(call, words):
    with pytest.raises(ValueError, match=words):
        call()
