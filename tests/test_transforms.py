"""wrap and strip (tf_lottery/transforms.py): whole-model copies with and without wrappers."""

import os

import keras
import numpy as np
import pytest
from conftest import compile_model
from conftest import data
from conftest import mlp

import tf_lottery as tl
from tf_lottery.transforms import fresh_copy

L = keras.layers


def test_wrap_keeps_the_weights_and_predictions():
    model = mlp()
    x, _ = data()
    wrapped = tl.wrap(model)
    np.testing.assert_array_equal(model.predict(x, verbose=0), wrapped.predict(x, verbose=0))
    for wrapper in tl.find_wrappers(wrapped):
        for saved in wrapper.saved_weights:
            np.testing.assert_array_equal(saved.initial.numpy(), saved.variable.numpy())
    # The original is untouched by pruning the copy.
    before = model.get_weights()
    tl.prune(wrapped, tl.PruneFraction(0.5))
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_wrap_exclude_and_nested_models():
    inner = keras.Sequential([keras.Input((8,)), L.Dense(8, name="inner_fc")], name="block")
    inputs = keras.Input((6,))
    x = L.Dense(8, name="fc1")(inputs)
    x = inner(x)
    outputs = L.Dense(2, name="out")(x)
    model = keras.Model(inputs, outputs)
    wrapped = tl.wrap(model, exclude=["out"])
    names = [w.layer.name for w in tl.find_wrappers(wrapped)]
    assert names == ["fc1", "inner_fc"]
    x = np.ones((3, 6), "float32")
    np.testing.assert_allclose(
        model.predict(x, verbose=0), wrapped.predict(x, verbose=0), rtol=1e-6
    )
    report = tl.sparsity(wrapped)
    assert not report["out"].wrapped


def test_strip_gives_a_plain_model_with_the_same_predictions(tmp_path):
    wrapped = compile_model(tl.wrap(mlp()))
    x, y = data()
    wrapped.fit(
        x,
        y,
        epochs=2,
        verbose=0,
        callbacks=[tl.IterativePruning(tl.PruneFraction(0.6), rewind=None, verbose=0)],
    )
    plain = tl.strip(wrapped)
    assert [type(layer).__name__ for layer in plain.layers] == ["Dense", "Dense"]
    np.testing.assert_allclose(
        plain.predict(x, verbose=0), wrapped.predict(x, verbose=0), rtol=1e-6
    )
    assert tl.sparsity(plain).surviving == tl.sparsity(wrapped).surviving
    path = os.path.join(tmp_path, "plain.keras")
    plain.save(path)
    config = open(path, "rb").read()
    assert b"tf_lottery" not in config


def test_wrap_and_strip_reuse_a_lambda_layer():
    inputs = keras.Input((20,))
    h = L.Dense(16, name="fc1")(inputs)
    h = L.Lambda(lambda t: t * 2.0)(h)
    model = keras.Model(inputs, L.Dense(3, name="out")(h))
    wrapped = compile_model(tl.wrap(model))
    x, y = data()
    wrapped.fit(x, y, epochs=1, verbose=0, callbacks=[tl.IterativePruning(tl.PruneFraction(0.5))])
    plain = tl.strip(wrapped)
    np.testing.assert_allclose(
        plain.predict(x, verbose=0), wrapped.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )


def _frozen_base_model():
    inputs = keras.Input((20,))
    base = keras.Sequential([L.Dense(16, name="base_fc")], name="base")
    base.trainable = False
    h = base(inputs)
    return keras.Model(inputs, L.Dense(3, name="head")(h))


def test_frozen_layers_are_left_unwrapped_with_a_true_message():
    model = _frozen_base_model()
    with pytest.warns(UserWarning, match=r"frozen \(trainable=False\) layers \['base_fc'\]"):
        wrapped = tl.wrap(model)
    assert [w.layer.name for w in tl.find_wrappers(wrapped)] == ["head"]
    report = tl.sparsity(wrapped)
    # The frozen kernel counts, as dense: 20*16 + 16*3 weights in all.
    assert report.total == 20 * 16 + 16 * 3
    assert not report["base_fc"].wrapped
    # Excluding a frozen layer is allowed, and says nothing more.
    tl.wrap(model, exclude=["base_fc"])
    head_frozen = _frozen_base_model()
    head_frozen.get_layer("head").trainable = False
    with pytest.raises(ValueError, match=r"\['base_fc', 'head'\] are frozen \(trainable=False\)"):
        tl.wrap(head_frozen)


def _mlp_with_batchnorm():
    inputs = keras.Input((6,))
    h = L.Dense(8, name="fc1")(inputs)
    h = L.BatchNormalization(name="bn")(h)
    return keras.Model(inputs, L.Dense(3, name="out")(h))


def test_wrap_puts_a_rewind_wrapper_around_every_other_layer_with_weights():
    wrapped = tl.wrap(_mlp_with_batchnorm())
    assert [w.layer.name for w in tl.find_wrappers(wrapped)] == ["fc1", "out"]
    rewind_only = [
        w for w in tl.find_rewind_wrappers(wrapped) if not isinstance(w, tl.PruneWrapper)
    ]
    assert [w.layer.name for w in rewind_only] == ["bn"]
    names = {s.name for s in rewind_only[0].saved_weights}
    assert {"gamma", "beta", "moving_mean", "moving_variance"} <= names


def test_wrap_keep_chooses_the_copies_and_refuses_an_unknown_value():
    kept = {}
    for keep in ("masks", "rewind", "both"):
        wrappers = tl.find_wrappers(tl.wrap(mlp(), keep=keep))
        kept[keep] = [s for w in wrappers for s in w.saved_weights]
    assert kept["masks"] == []
    # fc1 and out: kernel and bias each.
    assert len(kept["rewind"]) == len(kept["both"]) == 4
    assert all(s.initial is s.rewind_point for s in kept["rewind"])
    assert all(s.initial is not s.rewind_point for s in kept["both"])
    with pytest.raises(ValueError, match="keep.*'nope'"):
        tl.wrap(mlp(), keep="nope")


def test_strip_writes_weight_times_mask_and_leaves_the_wrapped_model_as_it_was():
    wrapped = tl.wrap(mlp())
    tl.prune(wrapped, tl.PruneFraction(0.5))
    masked = {w.layer.name: w.masked_weights for w in tl.find_wrappers(wrapped)}
    assert sorted(masked) == ["fc1", "out"]
    # A weight pruned but not yet zero (a hand edit) must come out zero.
    for (m,) in masked.values():
        m.variable.assign(m.variable.numpy() + 1.0)
    before = [v.numpy().copy() for v in wrapped.weights]
    plain = tl.strip(wrapped)
    for name, (m,) in masked.items():
        kernel = plain.get_layer(name).kernel.numpy()
        np.testing.assert_array_equal(kernel, m.variable.numpy() * m.mask.numpy())
        assert np.any(m.mask.numpy() == 0) and np.all(m.variable.numpy() != 0)
    for a, b in zip(before, wrapped.weights):
        np.testing.assert_array_equal(a, b.numpy())


def test_strip_in_place_is_refused_for_a_model_wrapped_as_a_copy():
    wrapped = tl.wrap(mlp())
    with pytest.raises(ValueError, match=r"in_place=True\) is for models wrapped in place"):
        tl.strip(wrapped, in_place=True)


def test_wrap_and_strip_in_place_keep_the_model_object():
    with pytest.raises(ValueError, match="Sequential model.*Received: in_place=True"):
        tl.wrap(mlp(), in_place=True)
    inputs = keras.Input((20,))
    model = keras.Model(inputs, L.Dense(3, name="out")(L.Dense(16, name="fc1")(inputs)))
    x, _ = data()
    expected = model.predict(x, verbose=0)
    wrapped = tl.wrap(model, in_place=True)
    assert wrapped is model and [w.layer.name for w in tl.find_wrappers(model)] == ["fc1", "out"]
    tl.prune(model, tl.PruneFraction(0.5))
    pruned = model.predict(x, verbose=0)
    assert not np.allclose(pruned, expected)
    plain = tl.strip(model, in_place=True)
    assert plain is model and not tl.find_wrappers(plain)
    np.testing.assert_allclose(plain.predict(x, verbose=0), pruned, rtol=1e-6)


def test_fresh_copy_reuses_a_layer_without_variables_and_rebuilds_one_with_them():
    flatten = L.Flatten()
    assert fresh_copy(flatten) is flatten
    dense = L.Dense(3, name="fc")
    dense.build((None, 4))
    copy = fresh_copy(dense)
    assert copy is not dense and isinstance(copy, L.Dense)
    assert copy.get_config() == dense.get_config() and not copy.built
