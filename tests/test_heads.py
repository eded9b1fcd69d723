"""Attention heads and feed-forward neurons as units: pruned whole, removed by shrink."""

import warnings


import keras
import numpy as np
import pytest

from conftest import check_computing_masks_changes_nothing

import tf_lottery as tl
from tf_lottery.structured.channels import channel_groups
from tf_lottery.structured.heads import head_groups
from tf_lottery.structured.shrink import NothingToShrink

L = keras.layers
WIDTH, HEADS, KEY_DIM, POSITIONS = 16, 4, 4, 6


def _attention(kind, name, use_gate=False):
    if kind == "gqa":
        return L.GroupQueryAttention(KEY_DIM, HEADS, 2, use_gate=use_gate, name=name)
    return L.MultiHeadAttention(HEADS, KEY_DIM, name=name)


def _transformer(kind="mha", blocks=1, use_gate=False):
    """Pre-norm blocks as in benchmarks/transformer.py: attention, then a GELU pair."""
    inputs = keras.Input((POSITIONS, WIDTH))
    x = inputs
    for i in range(blocks):
        h = L.LayerNormalization()(x)
        x = x + _attention(kind, f"attn{i}", use_gate)(h, h, use_causal_mask=True)
        h = L.LayerNormalization()(x)
        h = L.Dense(2 * WIDTH, activation="gelu", name=f"up{i}")(h)
        x = x + L.Dense(WIDTH, name=f"down{i}")(h)
    return keras.Model(inputs, L.Dense(3, name="head")(L.LayerNormalization()(x)))


def _x(count=8, seed=1):
    return np.random.default_rng(seed).normal(size=(count, POSITIONS, WIDTH)).astype("float32")


def _numpy(value):
    return np.asarray(keras.ops.convert_to_numpy(value))


def _per_unit(array, axis, units):
    return np.moveaxis(array, axis, 0).reshape(units, -1)


def _wrapped(model, name):
    """The wrapper of the layer `name` in a wrapped model."""
    return next(w for w in tl.find_wrappers(model) if w.layer.name == name)


def _head_masks(model, name):
    """{weight name: 0/1 per unit} of the attention layer `name`'s masks."""
    wrapper = _wrapped(model, name)
    units = head_groups(model)[0].size
    found = {}
    for masked in wrapper.masked_weights:
        axis = 0 if masked.name.startswith("attention_output") else 1
        rows = _per_unit(_numpy(masked.mask), axis, units)
        assert set(np.unique(rows.mean(axis=1))) <= {0.0, 1.0}, "a unit is masked in part"
        found[masked.name] = rows.mean(axis=1)
    return found


def _norm_scores(layer):
    """UnitNorm's score of each head: its query, key and value norms, each over their mean."""
    total = np.zeros(HEADS)
    for projection in (layer._query_dense, layer._key_dense, layer._value_dense):
        norms = np.linalg.norm(_per_unit(_numpy(projection.kernel), 1, HEADS), axis=1)
        total += norms / norms.mean()
    return total


def _inner(model, name):
    return next(w.layer for w in tl.find_wrappers(model) if w.layer.name == name)


def _attention_params(heads, kv_heads=None):
    kv_heads = heads if kv_heads is None else kv_heads
    projections = (heads + 2 * kv_heads) * (WIDTH * KEY_DIM + KEY_DIM)
    return projections + heads * KEY_DIM * WIDTH + WIDTH


def test_the_feed_forward_pair_of_a_pre_norm_block_is_one_prunable_channel_group():
    groups = {g.name: g for g in channel_groups(_transformer())}
    assert groups["up0"].prunable
    assert [c.layer.name for c in groups["up0"].consumers] == ["down0"]


def test_attention_layers_block_the_residual_stream_without_an_unknown_layer_warning():
    model = tl.wrap(_transformer())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tl.prune(model, tl.UnitNorm(0.5))
    assert not [w for w in caught if issubclass(w.category, UserWarning)]


def test_unit_norm_prunes_the_heads_of_smallest_query_key_value_norm_whole():
    model = tl.wrap(_transformer())
    expected = np.ones(HEADS)
    expected[np.argsort(_norm_scores(_inner(model, "attn0")), kind="stable")[:2]] = 0
    tl.prune(model, tl.UnitNorm(0.5))
    masks = _head_masks(model, "attn0")
    assert set(masks) == {"query/kernel", "key/kernel", "value/kernel", "attention_output/kernel"}
    for kept in masks.values():
        np.testing.assert_array_equal(kept, expected)


def test_pruned_heads_add_exactly_zero_whatever_their_biases():
    model = tl.wrap(_transformer())
    attention = _inner(model, "attn0")
    for projection in (attention._query_dense, attention._key_dense, attention._value_dense):
        projection.bias.assign(np.full(projection.bias.shape, 0.5, "float32"))
    tl.prune(model, tl.UnitNorm(0.5), layers=["attn0"])
    pruned = np.flatnonzero(_head_masks(model, "attn0")["value/kernel"] == 0)
    output = _numpy(attention._output_dense.kernel)
    assert not np.any(output[pruned])  # so the heads' biases reach nothing


def test_shrink_removes_pruned_heads_and_neurons_with_the_same_predictions():
    model = tl.wrap(_transformer(blocks=2))
    tl.prune(model, tl.UnitNorm(0.5, per_layer={"attn1": 0.25}))
    small = tl.shrink(model)
    assert small.get_layer("attn0").num_heads == 2
    assert small.get_layer("attn1").num_heads == 3  # heads may differ per layer
    assert small.get_layer("attn0").key_dim == KEY_DIM
    assert small.get_layer("up0").units == WIDTH
    assert small.get_layer("attn0").count_params() == _attention_params(2)
    assert small.get_layer("attn1").count_params() == _attention_params(3)
    x = _x()
    np.testing.assert_allclose(_numpy(small(x)), _numpy(model(x)), atol=1e-5)
    report = tl.shrink_report(model, small)
    assert (report["attn0"].units_before, report["attn0"].units_after) == (HEADS, 2)
    assert report.params_after == small.count_params()


def test_shrink_keeps_the_output_shape_of_attention_with_its_own_output_shape():
    inputs = keras.Input((POSITIONS, WIDTH))
    h = L.MultiHeadAttention(HEADS, KEY_DIM, output_shape=(5,), name="attn0")(inputs, inputs)
    model = keras.Model(inputs, L.Dense(2, name="out")(h))
    wrapped = tl.wrap(model)
    tl.prune(wrapped, tl.UnitNorm(0.5))
    small = tl.shrink(wrapped)
    assert small.get_layer("attn0").num_heads == 2
    assert small.get_layer("attn0").output.shape == (None, POSITIONS, 5)


def test_a_model_with_attention_shrinks_its_neurons_and_keeps_unpruned_heads():
    model = tl.wrap(_transformer())
    tl.prune(model, tl.UnitNorm(0.5), layers=["up0"])
    small = tl.shrink(model)
    assert small.get_layer("attn0").num_heads == HEADS
    assert small.get_layer("up0").units == WIDTH
    x = _x()
    np.testing.assert_allclose(_numpy(small(x)), _numpy(model(x)), atol=1e-5)


def test_shrink_of_an_attention_model_with_nothing_pruned_says_there_is_nothing():
    with pytest.raises(NothingToShrink, match="no unit"):
        tl.shrink(_transformer())


def test_a_head_thinned_by_unstructured_pruning_stays():
    model = tl.wrap(_transformer())
    tl.prune(model, tl.PruneFraction(0.9), layers=["attn0"])
    with pytest.raises(NothingToShrink):
        tl.shrink(model)


def test_shrink_removes_a_head_whose_values_are_zero():
    model = _transformer()
    value = model.get_layer("attn0")._value_dense
    kernel, bias = _numpy(value.kernel), _numpy(value.bias)
    kernel[:, 1], bias[1] = 0, 0
    value.kernel.assign(kernel)
    value.bias.assign(bias)
    small = tl.shrink(model)  # checks its own predictions against the model's
    assert small.get_layer("attn0").num_heads == HEADS - 1


def test_a_second_round_prunes_half_of_the_surviving_heads():
    model = tl.wrap(_transformer())
    tl.prune(model, tl.UnitNorm(0.5), layers=["attn0"])
    tl.prune(model, tl.UnitNorm(0.5), layers=["attn0"])
    assert _head_masks(model, "attn0")["query/kernel"].sum() == 1


def _scale_heads(attention, heads, factor):
    """Multiplies the query, key and value slices of `heads` by `factor`."""
    for projection in (attention._query_dense, attention._key_dense, attention._value_dense):
        kernel = _numpy(projection.kernel)
        kernel[:, heads] *= factor
        projection.kernel.assign(kernel)


def _even_heads(attention):
    """Gives every head the same query, key and value norms: head 0's slices."""
    for projection in (attention._query_dense, attention._key_dense, attention._value_dense):
        kernel = _numpy(projection.kernel)
        kernel[:] = kernel[:, :1]
        projection.kernel.assign(kernel)


@pytest.mark.parametrize("round_to, small, kept", [(1, [0, 1], [4, 2]), (2, [0], [4, 4])])
def test_global_scope_and_round_to_count_heads(round_to, small, kept):
    model = _transformer(blocks=2)
    for name in ("attn0", "attn1"):
        _even_heads(model.get_layer(name))
    _scale_heads(model.get_layer("attn1"), small, 0.1)
    model = tl.wrap(model)
    criterion = tl.UnitNorm(len(small) / (2 * HEADS), scope="global", round_to=round_to)
    tl.prune(model, criterion, layers=["attn0", "attn1"])
    assert [_head_masks(model, f"attn{i}")["query/kernel"].sum() for i in range(2)] == kept


@pytest.mark.parametrize("use_gate", [False, True])
def test_group_query_attention_loses_whole_key_value_groups_with_their_query_heads(use_gate):
    model = tl.wrap(_transformer("gqa", use_gate=use_gate))
    tl.prune(model, tl.UnitNorm(0.5))
    wrapper = _wrapped(model, "attn0")
    masks = {m.name: _numpy(m.mask) for m in wrapper.masked_weights}
    kv = _per_unit(masks["key/kernel"], 1, 2).mean(axis=1)
    assert sorted(kv) == [0.0, 1.0]
    # Query head i reads key/value head i // 2.
    np.testing.assert_array_equal(_per_unit(masks["query/kernel"], 1, HEADS).mean(1), kv.repeat(2))
    np.testing.assert_array_equal(
        _per_unit(masks["attention_output/kernel"], 0, HEADS).mean(1), kv.repeat(2)
    )
    if use_gate:
        np.testing.assert_array_equal(
            _per_unit(masks["gate/kernel"], 1, HEADS).mean(1), kv.repeat(2)
        )
    small = tl.shrink(model)
    attention = small.get_layer("attn0")
    assert (attention.num_query_heads, attention.num_key_value_heads) == (2, 1)
    assert attention.head_dim == KEY_DIM
    x = _x()
    np.testing.assert_allclose(_numpy(small(x)), _numpy(model(x)), atol=1e-5)


def _outlier_mlp():
    """up reads input j alone with weight w_j; inputs 0 and 1 are 100 times larger."""
    inputs = keras.Input((6,))
    up = L.Dense(6, name="up")
    x = up(inputs)
    down = L.Dense(4, name="down")
    model = keras.Model(inputs, L.Dense(2, name="out")(down(x)))
    up.kernel.assign(np.diag([0.1, 0.1, 1.0, 1.1, 1.2, 1.3]).astype("float32"))
    up.bias.assign(np.zeros(6, "float32"))
    rows = np.zeros((6, 4), "float32")
    rows[np.arange(6), np.arange(6) % 4] = 1.0  # every row of norm 1
    down.kernel.assign(rows)
    data = np.random.default_rng(0).normal(size=(64, 6))
    # Every input of the same norm before the scaling, so that scores follow the weights.
    data = data / np.linalg.norm(data, axis=0)
    data[:, :2] *= 100
    data = data.astype("float32")
    return model, data


def _kept_units(model, name):
    wrapper = _wrapped(model, name)
    return set(np.flatnonzero(_numpy(wrapper.unit_mask)))


def test_unit_activation_keeps_units_with_large_inputs_that_unit_norm_prunes():
    model, data = _outlier_mlp()
    by_norm, by_activation = tl.wrap(model), tl.wrap(model)
    tl.prune(by_norm, tl.UnitNorm(2 / 6), layers=["up"])
    tl.prune(by_activation, tl.UnitActivation(2 / 6, data=data), layers=["up"])
    assert _kept_units(by_norm, "up") == {2, 3, 4, 5}
    assert _kept_units(by_activation, "up") == {0, 1, 4, 5}


def _softmax(z):
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _reference_scores(model, x):
    """‖X_j‖₂·‖W[j, :]‖₂ of up0's neurons and attn0's heads, computed in numpy."""
    attention, down = model.get_layer("attn0"), model.get_layer("down0")
    # The attention's input and the down projection's input.
    taps = keras.Model(model.input, [model.layers[1].output, model.get_layer("up0").output])
    h, hidden = (np.asarray(_numpy(t), np.float64) for t in taps(x))
    q, k, v = (
        np.einsum("btd,dhk->bthk", h, _numpy(p.kernel)) + _numpy(p.bias)
        for p in (attention._query_dense, attention._key_dense, attention._value_dense)
    )
    logits = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(KEY_DIM)
    logits = np.where(np.tril(np.ones((POSITIONS, POSITIONS), bool)), logits, -np.inf)
    heads = np.einsum("bhqs,bshv->bqhv", _softmax(logits), v)
    output = _numpy(attention._output_dense.kernel)
    head_scores = (np.sqrt((heads**2).sum(axis=(0, 1))) * np.linalg.norm(output, axis=2)).sum(
        axis=1
    )
    ffn = np.sqrt((hidden**2).sum(axis=(0, 1))) * np.linalg.norm(_numpy(down.kernel), axis=1)
    return head_scores, ffn


def test_unit_activation_scores_heads_and_neurons_as_the_formula_says():
    model = _transformer()
    x = _x(12)
    head_scores, ffn_scores = _reference_scores(model, x)
    wrapped = tl.wrap(model)
    criterion = tl.UnitActivation(0.5, data=x, batch_size=5)
    groups = [g for g in channel_groups(wrapped) if g.name == "up0"] + head_groups(wrapped)
    score = criterion.scorer(groups, wrapped, {})
    np.testing.assert_allclose(score(groups[0]), ffn_scores, rtol=1e-4)
    np.testing.assert_allclose(score(groups[1]), head_scores, rtol=1e-4)
    tl.prune(wrapped, criterion)
    expected = np.ones(HEADS)
    expected[np.argsort(head_scores, kind="stable")[:2]] = 0
    np.testing.assert_array_equal(_head_masks(wrapped, "attn0")["value/kernel"], expected)
    kept = np.zeros(2 * WIDTH, bool)
    kept[np.argsort(ffn_scores, kind="stable")[WIDTH:]] = True
    assert _kept_units(wrapped, "up0") == set(np.flatnonzero(kept))


def test_unit_activation_needs_calibration_data():
    with pytest.raises(ValueError, match="data=None"):
        tl.UnitActivation(0.5)


def test_unit_activation_refuses_units_read_by_a_convolution_and_changes_nothing():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="conv1")(inputs)
    x = L.Conv2D(4, 3, name="conv2")(x)
    model = tl.wrap(keras.Model(inputs, L.Dense(2, name="out")(L.Flatten()(x))))
    data = np.zeros((4, 8, 8, 3), "float32")
    with pytest.raises(ValueError, match="'conv2' \\(Conv2D\\) reads them"):
        tl.prune(model, tl.UnitActivation(0.5, data=data), layers=["conv1"])
    assert tl.sparsity(model).sparsity == 0


@pytest.mark.parametrize("kind", ["mha", "gqa"])
@pytest.mark.parametrize(
    "make", [lambda: tl.UnitNorm(0.5), lambda: tl.UnitActivation(0.5, data=_x())]
)
def test_computing_head_and_neuron_masks_changes_nothing_and_prune_writes_them(kind, make):
    check_computing_masks_changes_nothing(tl.wrap(_transformer(kind)), make)
