"""Unit criteria, channel groups and shrink: structured pruning end to end."""

import re

import keras
import numpy as np
import pytest
from conftest import check_computing_masks_changes_nothing
from conftest import compile_model

import tf_lottery as tl
from tf_lottery.structured.channels import channel_groups

L = keras.layers


def _numpy(variable):
    return keras.ops.convert_to_numpy(variable.value)


def _set(layer, name, value):
    variable = {w.name: w for w in layer.weights}[name]
    variable.assign(np.asarray(value, dtype=variable.dtype))


def _residual_cnn():
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(8, 3, padding="same", name="c1")(inputs)
    a = L.ReLU()(L.BatchNormalization(name="bn1")(a))
    b = L.Conv2D(8, 3, padding="same", name="c2")(a)
    b = L.BatchNormalization(name="bn2")(b)
    x = L.ReLU()(L.Add()([a, b]))
    x = L.BatchNormalization(name="bn3")(L.DepthwiseConv2D(3, padding="same", name="dw")(x))
    x = L.Conv2D(12, 1, activation="relu", name="c3")(x)
    x = L.Dense(16, activation="relu", name="fc")(L.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, L.Dense(3, name="out")(x))


def _concat_flatten():
    inputs = keras.Input((6, 6, 2))
    a = L.Conv2D(4, 3, name="a")(inputs)
    b = L.MaxPooling2D(1)(L.Conv2D(3, 3, name="b")(inputs))
    x = L.Flatten()(L.Concatenate()([a, b]))
    return keras.Model(inputs, L.Dense(2, name="out")(L.Dense(5, name="fc")(x)))


def _data(model, n=32, seed=0):
    shape = (n,) + tuple(model.input_shape[1:])
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape).astype("float32"), rng.integers(0, 2, size=n)


def _groups(model):
    return {g.name: g for g in channel_groups(model)}


def test_groups_follow_residual_adds_batchnorm_and_depthwise():
    groups = _groups(_residual_cnn())
    joined = groups["c1+c2"]
    assert joined.prunable and joined.size == 8
    assert sorted(f.name for f, _ in joined.followers) == ["bn1", "bn2", "bn3", "dw"]
    assert sorted(c.layer.name for c in joined.consumers) == ["c2", "c3"]
    assert groups["c3"].prunable and groups["fc"].prunable
    assert groups["out"].blocked == ["they reach the model output"]


def test_groups_map_concatenate_offsets_and_flatten_rows():
    groups = _groups(_concat_flatten())
    (a_reader,) = groups["a"].consumers
    (b_reader,) = groups["b"].consumers
    # 4x4 positions of 4 + 3 channels: channel c of b is read by rows p*7 + 4 + c.
    assert (a_reader.offset, a_reader.width, a_reader.positions) == (0, 7, 16)
    assert (b_reader.offset, b_reader.width, b_reader.positions) == (4, 7, 16)
    assert b_reader.rows(1) == [p * 7 + 5 for p in range(16)]


def test_a_layer_the_analysis_does_not_know_blocks_its_group_and_shrink_warns_once():
    inputs = keras.Input((6,))
    x = L.Dense(8, name="fc1")(inputs)
    x = L.Lambda(lambda t: t * 2.0, name="double")(x)
    model = keras.Model(inputs, L.Dense(2, name="out")(L.Dense(4, name="fc2")(x)))
    groups = _groups(model)
    assert not groups["fc1"].prunable and "double" in groups["fc1"].blocked[0]
    _set(model.get_layer("fc1"), "kernel", np.zeros((6, 8)))
    _set(model.get_layer("fc2"), "kernel", np.zeros((8, 4)))
    with pytest.warns(UserWarning, match="layer 'double'") as caught:
        small = tl.shrink(model)
    assert len([w for w in caught if "double" in str(w.message)]) == 1
    assert small.get_layer("fc1").units == 8 and small.get_layer("fc2").units == 1
    wrapped = tl.wrap(model)
    criterion = tl.UnitNorm(0.5)
    with pytest.warns(UserWarning, match="leaves the units of fc1 as they are: layer 'double'"):
        tl.prune(wrapped, criterion)
    np.testing.assert_array_equal(_numpy(wrapped.get_layer("prune_fc1").unit_mask), np.ones(8))


def test_unit_norm_masks_the_smallest_columns_exactly():
    model = tl.wrap(
        keras.Sequential([keras.Input((3,)), L.Dense(4, name="fc"), L.Dense(2, name="out")])
    )
    kernel = np.array([[1, 0, 3, 0.5], [1, 0.1, 0, 0.5], [1, 0, 0, 0.5]], "float32")
    _set(model.get_layer("prune_fc").layer, "kernel", kernel)
    _set(model.get_layer("prune_fc").layer, "bias", [1, 2, 3, 4])
    # L2 norms 1.73, 0.1, 3, 0.87 -> half of them: units 1 and 3 go. L1: 3, 0.1, 3, 1.5.
    tl.prune(model, tl.UnitNorm(0.5))
    wrapper = model.get_layer("prune_fc")
    np.testing.assert_array_equal(_numpy(wrapper.masks["kernel"]).any(axis=0), [1, 0, 1, 0])
    np.testing.assert_array_equal(_numpy(wrapper.unit_mask), [1, 0, 1, 0])
    np.testing.assert_array_equal(_numpy(wrapper.layer.bias), [1, 0, 3, 0])
    assert not _numpy(model.get_layer("prune_out").masks["kernel"]).min() == 0  # output kept


def test_batchnorm_scale_scores_by_gamma_and_masks_gamma_and_beta():
    inputs = keras.Input((4,))
    x = L.BatchNormalization(name="bn")(L.Dense(4, name="fc")(inputs))
    model = tl.wrap(keras.Model(inputs, L.Dense(2, name="out")(x)))
    bn = model.get_layer("rewind_bn")
    _set(bn.layer, "gamma", [0.1, -2.0, 0.05, 1.0])
    _set(bn.layer, "beta", [1, 1, 1, 1])
    tl.prune(model, tl.BatchNormScale(0.5))
    np.testing.assert_array_equal(_numpy(bn.unit_mask), [0, 1, 0, 1])
    np.testing.assert_array_equal(_numpy(bn.layer.gamma), [0, -2, 0, 1])
    np.testing.assert_array_equal(_numpy(bn.layer.beta), [0, 1, 0, 1])
    kernel_mask = _numpy(model.get_layer("prune_fc").masks["kernel"])
    np.testing.assert_array_equal(kernel_mask.any(axis=0), [0, 1, 0, 1])


def test_unit_std_threshold_prunes_the_fraction_that_s_prunes_of_single_weights():
    model = tl.wrap(
        keras.Sequential([keras.Input((300,)), L.Dense(200, name="fc"), L.Dense(2, name="out")])
    )
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(300, 200)).astype("float32")
    _set(model.get_layer("prune_fc").layer, "kernel", kernel)
    tl.prune(model, tl.UnitStdThreshold(1.0))
    fraction = float(np.mean(np.abs(kernel) < kernel.std()))  # 0.683 for a Gaussian
    kept = _numpy(model.get_layer("prune_fc").unit_mask)
    assert 1 - kept.mean() == pytest.approx(fraction, abs=0.01)
    norms = np.linalg.norm(kernel, axis=0)
    assert norms[kept == 0].max() <= norms[kept == 1].min()


def test_round_to_keeps_unit_counts_a_multiple():
    model = tl.wrap(
        keras.Sequential([keras.Input((5,)), L.Dense(20, name="fc"), L.Dense(2, name="out")])
    )
    tl.prune(model, tl.UnitNorm(0.3, round_to=8))  # 14 would remain: rounded up to 16
    assert _numpy(model.get_layer("prune_fc").unit_mask).sum() == 16


@pytest.mark.parametrize("make", [tl.UnitNorm, tl.BatchNormScale, tl.UnitStdThreshold])
def test_computing_unit_masks_changes_nothing_and_prune_writes_them(make):
    inputs = keras.Input((6,))
    x = L.BatchNormalization(name="bn1")(L.Dense(8, name="fc1")(inputs))
    x = L.BatchNormalization(name="bn2")(L.Dense(6, name="fc2")(x))
    model = tl.wrap(keras.Model(inputs, L.Dense(2, name="out")(x)))
    rng = np.random.default_rng(0)
    for name, units in (("bn1", 8), ("bn2", 6)):
        _set(model.get_layer(f"rewind_{name}").layer, "gamma", rng.normal(size=units))
    check_computing_masks_changes_nothing(model, make)
    bn1 = model.get_layer("rewind_bn1")
    pruned = _numpy(bn1.unit_mask) == 0
    assert pruned.any()
    np.testing.assert_array_equal(_numpy(bn1.layer.gamma)[pruned], 0)
    np.testing.assert_array_equal(_numpy(model.get_layer("prune_fc1").layer.bias)[pruned], 0)


@pytest.mark.parametrize("criterion", [tl.UnitNorm(0.5, p=1), tl.UnitNorm(0.5, scope="global")])
def test_a_structured_ticket_trains_shrinks_and_rewinds_exactly(criterion):
    model = compile_model(tl.wrap(_residual_cnn()))
    initial = {
        (w.name, s.name): _numpy(s.initial)
        for w in tl.find_rewind_wrappers(model)
        for s in w.saved_weights
    }
    x, y = _data(model)
    pruning = tl.IterativePruning(criterion, rewind=None, verbose=0)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[pruning])
    assert pruning.rounds_done == 2
    small = tl.shrink(model)
    assert small.get_layer("c1").filters < 8 and small.get_layer("c3").filters < 12
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(small.predict(x, verbose=0)),
        keras.ops.convert_to_numpy(model.predict(x, verbose=0)),
        atol=1e-5,
    )
    tl.rewind(model)
    for wrapper in tl.find_rewind_wrappers(model):
        for saved in wrapper.saved_weights:
            expected = initial[(wrapper.name, saved.name)]
            if saved.mask is not None:
                expected = expected * _numpy(saved.mask)
            np.testing.assert_array_equal(_numpy(saved.variable), expected)


def test_shrink_folds_the_constant_of_units_left_dead_by_unstructured_pruning():
    model = keras.Sequential(
        [
            keras.Input((10,)),
            L.Dense(8, activation="relu", name="fc1"),
            L.Dense(6, activation="tanh", name="fc2"),
            L.Dense(3, name="out"),
        ]
    )
    kernel = _numpy(model.get_layer("fc1").kernel)
    kernel[:, [1, 4]] = 0  # incoming weights pruned: outputs relu(bias), folded
    _set(model.get_layer("fc1"), "kernel", kernel)
    _set(model.get_layer("fc1"), "bias", np.arange(8) - 3.0)
    out = _numpy(model.get_layer("out").kernel)
    out[2, :] = 0  # outgoing weights pruned: unused
    _set(model.get_layer("out"), "kernel", out)
    small = tl.shrink(model)
    assert [small.get_layer(n).units for n in ("fc1", "fc2", "out")] == [6, 5, 3]
    x = np.random.default_rng(1).normal(size=(16, 10)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(small.predict(x, verbose=0)),
        keras.ops.convert_to_numpy(model.predict(x, verbose=0)),
        atol=1e-5,
    )
    report = tl.shrink_report(model, small)
    assert report["fc1"].units_after == 6 and report.params_after < report.params_before


def test_shrink_keeps_a_constant_unit_before_a_same_padded_convolution():
    inputs = keras.Input((6, 6, 1))
    x = L.Conv2D(3, 3, padding="same", name="c1")(inputs)
    x = L.Conv2D(2, 3, padding="same", name="c2")(x)
    model = keras.Model(inputs, L.Dense(2, name="out")(L.Flatten()(x)))
    kernel = _numpy(model.get_layer("c1").kernel)
    kernel[..., 0] = 0
    kernel[..., 1] = 0
    _set(model.get_layer("c1"), "kernel", kernel)
    _set(model.get_layer("c1"), "bias", [0.0, 0.5, 0.2])  # unit 0: constant 0; unit 1: 0.5
    small = tl.shrink(model)
    assert small.get_layer("c1").filters == 2  # only the zero constant could go


@pytest.mark.tensorflow
def test_export_shrinks_first_and_the_file_matches_keras_in_litert(tmp_path):
    model = compile_model(tl.wrap(_residual_cnn()))
    x, y = _data(model)
    tl.prune(model, tl.UnitNorm(0.5))
    path = str(tmp_path / "small.tflite")
    report = tl.export_tflite(model, path)
    assert report.shrink is not None and report.shrink["c1"].units_after == 4
    assert "Shrunk before converting" in str(report) and report.verification
    np.testing.assert_allclose(tl.run_tflite(path, x), model.predict(x, verbose=0), atol=1e-4)
    unshrunk = tl.export_tflite(model, str(tmp_path / "full.tflite"), shrink=False)
    assert unshrunk.shrink is None and unshrunk.size > report.size


def test_structured_bad_input_changes_nothing():
    for bad in (0, 1, 1.5, -0.1, "half"):
        with pytest.raises(ValueError, match="rate"):
            tl.UnitNorm(bad)
    with pytest.raises(ValueError, match="round_to"):
        tl.UnitNorm(0.5, round_to=0)
    embedding = keras.Sequential(
        [
            keras.Input((4,), dtype="int32"),
            L.Embedding(10, 3, name="emb"),
            L.Flatten(),
            L.Dense(2, name="out"),
        ]
    )
    wrapped = tl.wrap(embedding)
    before = [_numpy(v) for v in wrapped.weights]
    with pytest.raises(ValueError, match="'emb' \\(Embedding\\) has no unit axis"):
        tl.prune(wrapped, tl.UnitNorm(0.5, per_layer={"emb": 0.5}))
    no_bn = tl.wrap(
        keras.Sequential([keras.Input((3,)), L.Dense(4, name="fc"), L.Dense(2, name="out")])
    )
    with pytest.raises(ValueError, match="'fc' has none after it"):
        tl.prune(no_bn, tl.BatchNormScale(0.5))
    with pytest.raises(ValueError, match="no unit that shrink\\(\\) can remove"):
        tl.shrink(keras.Sequential([keras.Input((3,)), L.Dense(4), L.Dense(2)]))
    for variable, value in zip(wrapped.weights, before):
        np.testing.assert_array_equal(_numpy(variable), value)


@pytest.mark.parametrize("rewind", ["init", None])
def test_a_structured_lottery_run_prunes_further_every_round_and_keeps_unit_masks(tmp_path, rewind):
    def build():
        model = keras.Sequential(
            [
                keras.Input((6,)),
                L.Dense(16, activation="tanh", name="fc"),
                L.BatchNormalization(name="bn"),
                L.Dense(3, name="out"),
            ]
        )
        return compile_model(model)

    x, y = _data(build(), n=64)
    out = str(tmp_path / "run")
    tl.find_winning_ticket(
        build,
        (x, y),
        validation_data=(x, y),
        criterion=tl.UnitNorm(0.5),
        rounds=2,
        epochs_per_round=2,
        rewind=rewind,
        controls=("reinit",) if rewind else (),
        out_dir=out,
        fit_kwargs={"batch_size": 16},
        verbose=0,
    )
    arms = ("ticket", "reinit") if rewind else ("ticket",)
    for arm in arms:
        model = tl.load_round(build, out, 2, arm=arm)
        wrapper, bn = model.get_layer("prune_fc"), model.get_layer("rewind_bn")
        alive = _numpy(wrapper.masks["kernel"]).any(axis=0)
        assert alive.sum() == 4, arm  # 16 -> 8 -> 4 units
        np.testing.assert_array_equal(_numpy(wrapper.unit_mask), alive)
        np.testing.assert_array_equal(_numpy(bn.unit_mask), alive)
        # Pruned units output exactly zero (tanh(0) = 0, BN β = 0), so shrink removes them.
        assert _numpy(bn.layer.beta)[~alive].tolist() == [0.0] * 12
        assert tl.shrink(model).get_layer("fc").units == 4


def test_nested_models_are_analysed_pruned_and_shrunk_as_one_graph():
    block = keras.Sequential(
        [
            keras.Input((8, 8, 8)),
            L.Conv2D(8, 3, padding="same", name="inner1"),
            L.BatchNormalization(name="inner_bn"),
            L.ReLU(),
            L.Conv2D(8, 3, padding="same", name="inner2"),
        ],
        name="block",
    )
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = L.Add()([x, block(x)])
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, L.Dense(2, name="out")(L.Dense(6, name="fc")(x)))
    groups = _groups(model)
    assert groups["inner1"].prunable
    assert [f.name for f, _ in groups["inner1"].followers] == ["inner_bn"]
    assert not groups["stem+inner2"].prunable  # its channels are the block's input
    assert "nested model 'block'" in groups["stem+inner2"].blocked[0]
    wrapped = compile_model(tl.wrap(model))
    x_data, y = _data(wrapped)
    wrapped.fit(x_data, y, epochs=1, batch_size=16, verbose=0)
    tl.prune(wrapped, tl.UnitNorm(0.5))
    small = tl.shrink(wrapped)
    assert small.get_layer("block").get_layer("inner1").filters == 4
    assert small.get_layer("stem").filters == 8 and small.get_layer("fc").units == 3
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(small.predict(x_data, verbose=0)),
        keras.ops.convert_to_numpy(wrapped.predict(x_data, verbose=0)),
        atol=1e-5,
    )


def test_shrink_that_finds_nothing_to_remove_says_what_it_found():
    unstructured = tl.wrap(
        keras.Sequential([keras.Input((8,)), L.Dense(6, name="fc"), L.Dense(3, name="out")])
    )
    tl.prune(unstructured, tl.PruneFraction(0.3))
    pruned = f"{tl.sparsity(unstructured).sparsity:.1%} of the kernel weights"
    with pytest.raises(
        ValueError, match=rf"{re.escape(pruned)} .* none of their 9 units .*UnitNorm"
    ):
        tl.shrink(unstructured)
    # Units with every incoming weight pruned, but only where shrink must keep them.
    output_unit = keras.Sequential([keras.Input((8,)), L.Dense(6), L.Dense(3)])
    kernel = _numpy(output_unit.layers[1].kernel)
    kernel[:, 0] = 0
    output_unit.layers[1].kernel.assign(kernel)
    with pytest.raises(ValueError, match="1 of the 9 units .* has every incoming weight pruned"):
        tl.shrink(output_unit)
