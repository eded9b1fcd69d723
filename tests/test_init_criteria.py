"""Pruning at initialization: SNIP, SynFlow and GraSP scores against hand computations."""

import keras
import numpy as np
import pytest
from conftest import mlp

import tf_lottery as tl
from tf_lottery.pruning import prune_targets

N, D, K = 8, 5, 3


def linear():
    """A wrapped linear model y = xW + b, compiled with mean squared error, and data."""
    model = tl.wrap(keras.Sequential([keras.Input((D,)), keras.layers.Dense(K, name="fc")]))
    model.compile("sgd", "mse")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(N, D)).astype("float32")
    y = rng.normal(size=(N, K)).astype("float32")
    return model, x, y


def kernel(model):
    return keras.ops.convert_to_numpy(model.layers[0].layer.kernel)


def bias(model):
    return keras.ops.convert_to_numpy(model.layers[0].layer.bias)


def mask(model):
    return keras.ops.convert_to_numpy(model.layers[0].masks["kernel"])


def scores(criterion, model):
    targets = prune_targets(tl.find_wrappers(model))
    masks = [keras.ops.convert_to_numpy(t.mask) for t in targets]
    return criterion.scores(model, targets, masks)


def top(score, count):
    """The mask keeping the `count` largest scores (no ties in these tests)."""
    keep = np.zeros(score.size, dtype=bool)
    keep[np.argsort(-score.ravel())[:count]] = True
    return keep.reshape(score.shape)


def test_snip_scores_equal_the_hand_computed_connection_sensitivity():
    model, x, y = linear()
    w, b = kernel(model), bias(model)
    gradient = 2 / (N * K) * x.T @ (x @ w + b - y)  # of mean squared error
    (score,) = scores(tl.SNIP(data=(x, y)), model)
    np.testing.assert_allclose(score, np.abs(gradient * w), rtol=1e-4, atol=1e-7)
    # Two equal batches average to the same gradient.
    (halves,) = scores(tl.SNIP(data=(x, y), batches=2), model)
    np.testing.assert_allclose(halves, score, rtol=1e-4, atol=1e-7)
    tl.prune(model, tl.SNIP(0.6, data=(x, y)))
    np.testing.assert_array_equal(mask(model) > 0, top(np.abs(gradient * w), 6))  # 15 - 9
    assert np.count_nonzero(kernel(model)) == 6


def test_grasp_scores_equal_the_hand_computed_hessian_gradient_product():
    model, x, y = linear()
    w, b = kernel(model), bias(model)
    t = 200.0
    # Mean squared error of (xW + b) / t: gradient g, and the Hessian times g.
    residual = (x @ w + b) / t - y
    g_w, g_b = 2 / (N * K * t) * x.T @ residual, 2 / (N * K * t) * residual.sum(0)
    d_residual = (x @ g_w + g_b) / t
    hg_w = 2 / (N * K * t) * x.T @ d_residual
    (score,) = scores(tl.GraSP(data=(x, y), temperature=t), model)
    # Larger is kept: θ ⊙ Hg, the negative of GraSP's -θ ⊙ Hg.
    np.testing.assert_allclose(score, w * hg_w, rtol=1e-3, atol=1e-12)
    tl.prune(model, tl.GraSP(0.6, data=(x, y), temperature=t))
    np.testing.assert_array_equal(mask(model) > 0, top(w * hg_w, 6))


def on_paths(model):
    """Per kernel of an MLP, which surviving weights lie on a path from an input to an output."""
    masks = [keras.ops.convert_to_numpy(w.masks["kernel"]) > 0 for w in tl.find_wrappers(model)]
    reached = [np.ones(masks[0].shape[0], bool)]  # units an input reaches
    for m in masks:
        reached.append((reached[-1] @ m) > 0)
    reaching = [np.ones(masks[-1].shape[1], bool)]  # units that reach an output
    for m in reversed(masks):
        reaching.insert(0, (m @ reaching[0]) > 0)
    return [m & reached[i][:, None] & reaching[i + 1][None, :] for i, m in enumerate(masks)]


def deep():
    return keras.Sequential(
        [
            keras.Input((20,)),
            keras.layers.Dense(32, activation="relu", name="fc1"),
            keras.layers.Dense(32, activation="relu", name="fc2"),
            keras.layers.Dense(32, activation="relu", name="fc3"),
            keras.layers.Dense(3, name="out"),
        ]
    )


def test_synflow_keeps_a_path_from_input_to_output_at_high_sparsity():
    model = tl.wrap(deep())
    total = sum(int(np.prod(w.masks["kernel"].shape)) for w in tl.find_wrappers(model))
    tl.prune(model, tl.SynFlow(0.995, iterations=20))  # 11 of 2,208 weights
    kept = sum(
        int(keras.ops.convert_to_numpy(w.masks["kernel"]).sum()) for w in tl.find_wrappers(model)
    )
    assert kept == total - round(0.995 * total)
    # A path from an input to an output is alive. (Magnitude pruning and SNIP at
    # this sparsity left none in this network when we checked: layer collapse.)
    assert all(p.any() for p in on_paths(model))


def test_synflow_scores_are_the_synaptic_flow_of_a_linear_model():
    model, _, _ = linear()
    w, b = kernel(model), bias(model)
    # R = sum(1·|W| + |b|): dR/dW_ij = 1, so the score is |W_ij|.
    (score,) = scores(tl.SynFlow(), model)
    np.testing.assert_allclose(score, np.abs(w), rtol=1e-6)
    del b


def test_pruning_at_initialization_only_shrinks_masks():
    model, x, y = linear()
    tl.prune(model, tl.PruneFraction(0.5))
    before = mask(model)
    for criterion in (tl.SNIP(0.7, data=(x, y)), tl.SynFlow(0.8, iterations=3)):
        tl.prune(model, criterion)
        after = mask(model)
        assert not np.any(after > before)
        before = after
    assert int(before.sum()) == 15 - 12  # 80% of all 15 weights pruned


def test_a_softmax_output_leaves_synflow_no_flow():
    model = tl.wrap(
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    )
    with pytest.raises(ValueError, match="no flow.*logits"):
        tl.prune(model, tl.SynFlow(0.5, iterations=2))


def test_init_criteria_bad_input():
    model, x, y = linear()
    with pytest.raises(
        ValueError, match="SNIP scores weights by the loss gradient on data.*data=None"
    ):
        tl.SNIP(0.5)
    with pytest.raises(ValueError, match="GraSP.*data=None"):
        tl.GraSP(0.5)
    with pytest.raises(ValueError, match="Expected data to be"):
        tl.SNIP(0.5, data=[x, y])
    with pytest.raises(ValueError, match="sparsity=1.0"):
        tl.SNIP(1.0, data=(x, y))
    with pytest.raises(ValueError, match="batches=0"):
        tl.SNIP(0.5, data=(x, y), batches=0)
    with pytest.raises(ValueError, match="iterations=0"):
        tl.SynFlow(0.5, iterations=0)
    with pytest.raises(ValueError, match="temperature=0"):
        tl.GraSP(0.5, data=(x, y), temperature=0)
    targets = prune_targets(tl.find_wrappers(model))
    with pytest.raises(ValueError, match=r"tf_lottery.prune\(model, criterion\)"):
        list(tl.SNIP(0.5, data=(x, y)).compute_masks(targets))
    plain = tl.wrap(mlp())
    with pytest.raises(ValueError, match="needs a loss"):
        tl.prune(plain, tl.SNIP(0.5, data=(x, y)))


def test_with_sparsity_copies_and_config_round_trips():
    snip = tl.SNIP(0.5, data=(np.zeros((2, 5)), np.zeros((2, 3))), batches=2, loss="mse")
    other = snip.with_sparsity(0.8)
    assert (snip.sparsity, other.sparsity, other.batches) == (0.5, 0.8, 2)
    assert snip.get_config() == {"sparsity": 0.5, "batches": 2, "loss": "mse"}
    synflow = tl.SynFlow(0.9, iterations=7, input_shape=(5,))
    assert tl.SynFlow.from_config(synflow.get_config()).get_config() == synflow.get_config()


def _snip_model():
    from conftest import compile_model
    from conftest import data

    keras.utils.set_random_seed(3)
    model = tl.wrap(mlp())
    compile_model(model)
    return model, data()


def test_a_scorer_ranks_the_weights_that_prune_fraction_selects_per_layer():
    model, (x, y) = _snip_model()
    snip = tl.SNIP(data=(x, y))
    expected = scores(snip, model)
    tl.prune(model, tl.PruneFraction(0.5, output_rate=0.25, scorer=snip))
    for wrapper, score, kept in zip(tl.find_wrappers(model), expected, (0.5, 0.75)):
        # Each layer keeps its own best by SNIP's saliency: 50% of fc1, 75% of out.
        mask = keras.ops.convert_to_numpy(wrapper.masks["kernel"]) > 0
        np.testing.assert_array_equal(mask, top(score, round(kept * score.size)))


def test_a_scorer_with_the_global_scope_and_a_target_is_the_scorers_own_one_shot_ranking():
    model, (x, y) = _snip_model()
    twin, _ = _snip_model()  # the same seed: the same weights
    tl.prune(model, tl.SNIP(0.8, data=(x, y)))
    criterion = tl.PruneFraction(scope="global", scorer=tl.SNIP(data=(x, y)))
    tl.prune(twin, criterion, sparsity=0.8)
    for ours, theirs in zip(tl.find_wrappers(twin), tl.find_wrappers(model)):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(ours.masks["kernel"]),
            keras.ops.convert_to_numpy(theirs.masks["kernel"]),
        )


def test_a_scorer_needs_the_model_and_its_config_names_it():
    model, (x, y) = _snip_model()
    snip = tl.SNIP(data=(x, y))
    criterion = tl.PruneFraction(0.5, scorer=snip)
    assert criterion.uses_model and not tl.PruneFraction(0.5).uses_model
    with pytest.raises(ValueError, match=r"call tf_lottery.prune\(model, criterion\)"):
        list(criterion.compute_masks(prune_targets(tl.find_wrappers(model))))
    assert criterion.get_config()["scorer"] == {"class": "SNIP", **snip.get_config()}
    with pytest.raises(ValueError, match="build the criterion again with scorer="):
        tl.PruneFraction.from_config(criterion.get_config())
    with pytest.raises(ValueError, match=r"Received: scorer=PruneFraction"):
        tl.PruneFraction(scorer=tl.PruneFraction())
    assert "scorer" not in tl.PruneFraction(0.5).get_config()


def test_a_scorer_follows_a_schedule_of_gradual_pruning():
    model, (x, y) = _snip_model()
    criterion = tl.PruneFraction(scorer=tl.SNIP(data=(x[:64], y[:64])))
    schedule = tl.ConstantSparsity(0.5, begin_step=0, frequency=2)
    model.fit(
        x, y, epochs=1, batch_size=32, verbose=0, callbacks=[tl.GradualPruning(schedule, criterion)]
    )
    for wrapper in tl.find_wrappers(model):
        assert keras.ops.convert_to_numpy(wrapper.masks["kernel"]).mean() == 0.5


def test_a_scorer_takes_the_dict_inputs_of_a_keras_hub_model():
    pytest.importorskip("keras_hub")
    from hub_models import SEQ
    from hub_models import bert

    keras.utils.set_random_seed(0)
    # No dropout: SNIP's gradients are taken in training mode, and dropout would draw
    # other units for the scores compared here than for those prune ranks by.
    model = bert(dropout=0.0)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = {
        "token_ids": rng.integers(1, 50, (16, SEQ)).astype("int32"),
        "segment_ids": np.zeros((16, SEQ), "int32"),
        "padding_mask": np.ones((16, SEQ), "int32"),
    }
    y = rng.integers(0, 2, 16)
    with pytest.warns(UserWarning, match="prunes no weight of 'position_embedding'"):
        model = tl.wrap(model, keep="masks")
    snip = tl.SNIP(data=(x, y), batches=2)  # the dict is cut into batches input by input
    expected = scores(snip, model)
    tl.prune(model, tl.PruneFraction(0.5, output_rate=0.5, scorer=snip))
    for target, score in zip(prune_targets(tl.find_wrappers(model)), expected):
        mask = keras.ops.convert_to_numpy(target.mask) > 0
        np.testing.assert_array_equal(mask, top(score, round(0.5 * score.size)))
