"""Exact masks of each criterion on small hand-made tensors."""

import math

import numpy as np
import pytest

import tf_lottery as tl
from tf_lottery.criteria import PruneTarget
from tf_lottery.selection import erk_sparsities


def target(weight, mask=None, layer="fc", name="kernel", layer_type="Dense", **kwargs):
    weight = np.asarray(weight, dtype="float32")
    mask = np.ones_like(weight) if mask is None else np.asarray(mask, dtype="float32")
    return PruneTarget(layer, name, layer_type, weight, mask, **kwargs)


def masks(criterion, *targets):
    return [m for m, _ in criterion.compute_masks(list(targets))]


def results(criterion, *targets):
    return list(criterion.compute_masks(list(targets)))


W = np.array([[0.1, -0.5, 0.9], [-0.05, 0.3, -1.2]], dtype="float32")


def test_std_threshold_prunes_below_s_times_std():
    (mask,) = masks(tl.StdThreshold(quality=1.0), target(W))
    threshold = np.std(W)
    np.testing.assert_array_equal(mask, (np.abs(W) >= threshold).astype("float32"))
    assert mask.tolist() == [[0, 0, 1], [0, 0, 1]]


def test_std_is_taken_over_survivors_only():
    mask0 = np.array([[1, 1, 1], [0, 1, 1]], dtype="float32")
    (result,) = results(tl.StdThreshold(quality=1.0), target(W, mask0))
    mask, threshold = result
    survivors = W[mask0 > 0]
    assert math.isclose(threshold, float(np.std(survivors)), rel_tol=1e-6)
    expected = mask0 * (np.abs(W) >= np.std(survivors))
    np.testing.assert_array_equal(mask, expected)


def test_std_threshold_per_layer_quality():
    a, b = target(W, layer="a"), target(W, layer="b")
    ma, mb = masks(tl.StdThreshold(quality=0.0, per_layer={"b": 1.0}), a, b)
    assert ma.all()
    assert mb.sum() == 2


def test_fixed_std_keeps_the_first_threshold():
    criterion = tl.StdThreshold(quality=0.5, fixed_std=True)
    ((mask, threshold),) = results(criterion, target(W))
    assert math.isclose(threshold, 0.5 * float(np.std(W)), rel_tol=1e-6)
    ((_, again),) = results(criterion, target(W, mask, threshold=threshold))
    assert again == threshold


def test_prune_fraction_prunes_exactly_that_fraction_of_survivors():
    weight = np.arange(1, 11, dtype="float32").reshape(2, 5)
    (mask,) = masks(tl.PruneFraction(0.3), target(weight))
    assert mask.ravel().tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    (mask,) = masks(tl.PruneFraction(0.5), target(weight, mask))
    # 7 survivors, round(3.5) = 4 more pruned: 4, 5, 6, 7.
    assert mask.ravel().tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 1, 1]


def test_prune_fraction_halves_the_output_layer_rate():
    weight = np.arange(1, 21, dtype="float32").reshape(4, 5)
    hidden, out = masks(
        tl.PruneFraction(0.2),
        target(weight, layer="fc"),
        target(weight, layer="out", is_output=True),
    )
    assert hidden.sum() == 16 and out.sum() == 18


def test_global_scope_equals_hand_computation():
    a = np.array([[0.1, 0.9], [0.4, 0.2]], dtype="float32")
    b = np.array([[0.3, 0.05, 0.8]], dtype="float32")
    ma, mb = masks(
        tl.PruneFraction(3 / 7, scope="global"), target(a, layer="a"), target(b, layer="b")
    )
    # All 7 magnitudes: 0.05 0.1 0.2 | 0.3 0.4 0.8 0.9, the smallest 3 go.
    assert ma.tolist() == [[0, 1], [1, 0]]
    assert mb.tolist() == [[1, 0, 1]]


def test_global_scope_normalized_by_each_tensors_mean_equals_hand_computation():
    a = np.array([[0.1, 0.9], [0.4, 0.2]], dtype="float32")  # mean 0.4
    b = np.array([[30.0, 5.0, 80.0, 45.0]], dtype="float32")  # mean 40
    criterion = tl.PruneFraction(3 / 8, scope="global", normalize="mean")
    (ma, ta), (mb, tb) = criterion.compute_masks([target(a, layer="a"), target(b, layer="b")])
    # Scores over the means: a 0.25 2.25 1.0 0.5, b 0.75 0.125 2.0 1.125; the smallest 3
    # (0.125, 0.25, 0.5) go. Raw magnitude would take all three from a.
    assert ma.tolist() == [[0, 1], [1, 0]]
    assert mb.tolist() == [[1, 0, 1, 1]]
    # Each tensor's threshold is the cut (0.5) in its own units.
    assert math.isclose(ta, 0.2, rel_tol=1e-6) and math.isclose(tb, 20.0, rel_tol=1e-6)
    (raw_a, _), (raw_b, _) = tl.PruneFraction(3 / 8, scope="global").compute_masks(
        [target(a, layer="a"), target(b, layer="b")]
    )
    assert raw_a.sum() == 1 and raw_b.all()


def test_normalized_global_scope_spreads_a_target_sparsity_whatever_the_layers_scale():
    rng = np.random.default_rng(0)
    small = rng.normal(size=(40, 30)).astype("float32")
    large = 100 * rng.normal(size=(40, 30)).astype("float32")
    tensors = [target(small, layer="small"), target(large, layer="large")]
    criterion = tl.PruneFraction(scope="global", normalize="mean")
    pruned = [1 - m.mean() for m, _ in criterion.compute_target_masks(tensors, 0.6)]
    assert abs(sum(pruned) / 2 - 0.6) < 1e-3 and all(abs(p - 0.6) < 0.05 for p in pruned)
    raw_masks = tl.PruneFraction(scope="global").compute_target_masks(tensors, 0.6)
    with pytest.warns(UserWarning, match="would prune every surviving weight of small/kernel"):
        raw = [1 - m.mean() for m, _ in raw_masks]
    assert raw[0] > 0.99 and raw[1] < 0.25


def test_normalize_is_a_global_option_and_in_the_config_only_when_set():
    for scope in ("layer", "erk"):
        with pytest.raises(ValueError, match=f"Received: scope='{scope}', normalize='mean'"):
            tl.PruneFraction(scope=scope, normalize="mean")
    with pytest.raises(ValueError, match="Received: normalize='max'"):
        tl.PruneFraction(scope="global", normalize="max")
    assert "normalize" not in tl.PruneFraction(scope="global").get_config()
    criterion = tl.PruneFraction(0.3, scope="global", normalize="mean")
    again = tl.PruneFraction.from_config(criterion.get_config())
    assert again.normalize == "mean" and again.get_config() == criterion.get_config()


def test_global_and_layer_scope_agree_on_one_tensor():
    weight = np.random.default_rng(1).normal(size=(8, 8)).astype("float32")
    (local,) = masks(tl.PruneFraction(0.4), target(weight))
    (whole,) = masks(tl.PruneFraction(0.4, scope="global"), target(weight))
    np.testing.assert_array_equal(local, whole)


def test_blocks_are_scored_by_mean_magnitude():
    weight = np.array(
        [[1.0, 0.1], [1.0, 0.1], [0.2, 5.0], [0.2, 5.0]], dtype="float32"
    )  # [in=4, out=2]; (2, 1) blocks along the input dimension
    (mask,) = masks(tl.PruneFraction(0.5, block=(2, 1)), target(weight))
    assert mask.tolist() == [[1, 0], [1, 0], [0, 1], [0, 1]]


def test_partial_last_block():
    weight = np.array([[3.0], [3.0], [3.0], [0.1], [0.1]], dtype="float32")  # 5 rows, blocks of 4
    (mask,) = masks(tl.PruneFraction(0.5, block=(4, 1)), target(weight))
    assert mask.ravel().tolist() == [1, 1, 1, 1, 0]


def test_block_std_threshold():
    weight = np.array([[0.01], [0.02], [2.0], [1.0]], dtype="float32")
    (mask,) = masks(tl.StdThreshold(0.5, block=(2, 1)), target(weight))
    assert mask.ravel().tolist() == [0, 0, 1, 1]


GAUSSIAN = np.random.default_rng(5).normal(size=(784, 300)).astype("float32")


@pytest.mark.parametrize("fixed_std", [False, True])
@pytest.mark.parametrize("quality", [0.3, 0.5, 1.0, 1.5])
def test_std_threshold_quality_means_the_same_with_and_without_blocks(quality, fixed_std):
    (single,) = masks(tl.StdThreshold(quality, fixed_std=fixed_std), target(GAUSSIAN))
    for block in [(4, 1), (16, 1), "tflite-int8"]:
        criterion = tl.StdThreshold(quality, block=block, fixed_std=fixed_std)
        (blocked,) = masks(criterion, target(GAUSSIAN))
        assert abs(blocked.mean() - single.mean()) < 0.02, f"block={block}"


@pytest.mark.parametrize("quality", [0.3, 0.5, 1.0])
def test_std_threshold_on_single_weights_is_the_formula_round_after_round(quality):
    mask = np.ones_like(GAUSSIAN)
    for _ in range(3):
        expected = mask * (np.abs(GAUSSIAN) >= quality * np.std(GAUSSIAN[mask > 0]))
        (mask,) = masks(tl.StdThreshold(quality, block=(1, 1)), target(GAUSSIAN, mask))
        np.testing.assert_array_equal(mask, expected)


def test_tflite_block_choice_blocks_dense_only():
    criterion = tl.PruneFraction(0.5, block="tflite-int8")
    assert criterion.block_for("Dense", (300, 100)) == (16, 1)
    assert criterion.block_for("Conv2D", (3, 3, 1, 8)) == (1, 1)


def test_random_prune_has_the_same_counts_but_other_weights():
    weight = np.random.default_rng(2).normal(size=(20, 20)).astype("float32")
    (magnitude,) = masks(tl.PruneFraction(0.5), target(weight))
    (random,) = masks(tl.RandomPrune(0.5, seed=3), target(weight))
    assert magnitude.sum() == random.sum() == 200
    assert not np.array_equal(magnitude, random)


def test_masks_never_revive_and_keep_one_weight():
    weight = np.array([[5.0, 4.0, 3.0]], dtype="float32")
    mask = np.array([[0, 1, 0]], dtype="float32")
    (new,) = masks(tl.StdThreshold(quality=0.0), target(weight, mask))
    assert new.tolist() == [[0, 1, 0]]
    with pytest.warns(UserWarning, match="every surviving weight"):
        (new,) = masks(tl.PruneFraction(0.9), target(weight, mask))
    assert new.tolist() == [[0, 1, 0]]


def test_ties_still_prune_the_exact_count():
    weight = np.ones((4, 4), dtype="float32")
    (mask,) = masks(tl.PruneFraction(0.25), target(weight))
    assert mask.sum() == 12


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: tl.StdThreshold(quality=-0.1), "quality"),
        (lambda: tl.StdThreshold(per_layer={"a": -1}), "per_layer"),
        (lambda: tl.PruneFraction(rate=0), "rate"),
        (lambda: tl.PruneFraction(rate=1.0), "rate"),
        (lambda: tl.PruneFraction(rate="0.2"), "rate"),
        (lambda: tl.PruneFraction(scope="model"), "scope"),
        (lambda: tl.PruneFraction(scope="global", per_layer={"a": 0.1}), "per_layer"),
        (lambda: tl.PruneFraction(block=(0, 1)), "block"),
        (lambda: tl.PruneFraction(block=(4, -1)), "block"),
        (lambda: tl.PruneFraction(block=(4,)), "block"),
        (lambda: tl.PruneFraction(block="tflite"), "block"),
        (lambda: tl.RandomPrune(seed="x"), "seed"),
        (lambda: tl.PruneFraction(block_pooling="MAX"), "block_pooling"),
        (lambda: tl.PruneFraction(scope="erk", per_layer={"a": 0.1}), "per_layer"),
        (lambda: tl.NMSparsity(4, 4), "n < m"),
        (lambda: tl.NMSparsity(0, 4), "n"),
        (lambda: tl.NMSparsity(2, 2.0), "m"),
    ],
)
def test_bad_arguments_name_themselves(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("scope", ["erk", "global"])
@pytest.mark.parametrize("make", [tl.PruneFraction, tl.RandomPrune])
def test_output_rate_with_a_scope_over_all_layers_is_refused_when_made(make, scope):
    # Before, erk took it and failed later in prune with a message about
    # schedules, and global ignored it.
    with pytest.raises(
        ValueError,
        match=r"output_rate only applies with scope='layer'.*"
        rf"Received: scope='{scope}', output_rate=0.1",
    ):
        make(0.2, scope=scope, output_rate=0.1)


def test_block_on_a_non_2d_weight_is_refused():
    conv = target(np.ones((3, 3, 1, 4)), layer_type="Conv2D")
    with pytest.raises(ValueError, match="2-D"):
        results(tl.PruneFraction(0.5, block=(4, 1)), conv)


@pytest.mark.parametrize(
    "criterion",
    [
        tl.StdThreshold(0.7, per_layer={"fc1": 0.3}, block=(4, 1), fixed_std=True),
        tl.PruneFraction(0.3, scope="global", block="tflite-float"),
        tl.RandomPrune(0.1, output_rate=0.05, seed=4),
        tl.PruneFraction(0.3, scope="erk", block=(2, 2), block_pooling="max"),
        tl.NMSparsity(1, 4),
    ],
)
def test_config_round_trip(criterion):
    clone = type(criterion).from_config(criterion.get_config())
    assert clone.get_config() == criterion.get_config()


def test_tflite_modes_prune_the_partial_last_block():
    weight = np.ones((20, 2), dtype="float32")  # 16 + 4 input rows
    (mask,) = masks(tl.StdThreshold(0.0, block="tflite-int8"), target(weight))
    assert mask[:16].all() and not mask[16:].any()
    (mask,) = masks(tl.StdThreshold(0.0, block=(16, 1)), target(weight))
    assert mask.all()


class AbsoluteThreshold(tl.Criterion):
    """The example from Criterion's docstring."""

    def __init__(self, threshold=1e-3, **kwargs):
        super().__init__(**kwargs)
        self.threshold = threshold

    def compute_mask(self, target):
        return target.scores >= self.threshold, self.threshold

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


def test_a_user_criterion_gets_blocks_and_shrinking_masks_for_free():
    weight = np.array([[0.5, 0.01], [0.6, 0.02], [0.001, 0.9], [0.002, 0.8]], dtype="float32")
    mask = np.array([[0, 1], [1, 1], [1, 1], [1, 1]], dtype="float32")
    (new,) = masks(AbsoluteThreshold(0.1), target(weight, mask))
    assert new.tolist() == [[0, 0], [1, 0], [0, 1], [0, 1]]  # |w| < 0.1 gone, [0, 0] stays dead
    (blocked,) = masks(AbsoluteThreshold(0.1, block=(2, 1)), target(weight))
    assert blocked.tolist() == [[1, 0], [1, 0], [0, 1], [0, 1]]
    assert AbsoluteThreshold.from_config(AbsoluteThreshold(0.2).get_config()).threshold == 0.2


def test_the_last_weight_warning_comes_once_per_tensor():
    import warnings

    weight = np.array([[5.0, 4.0]], dtype="float32")
    mask = np.array([[0, 1]], dtype="float32")
    criterion = tl.PruneFraction(0.9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            (new,) = masks(criterion, target(weight, mask))
            assert new.tolist() == [[0, 1]]
    assert len([w for w in caught if "every surviving weight" in str(w.message)]) == 1


def targets_of(criterion, sparsity, *targets):
    return [m for m, _ in criterion.compute_target_masks(list(targets), sparsity)]


def test_a_target_sparsity_keeps_tfmots_count_of_the_largest_weights():
    weight = np.arange(1, 11, dtype="float32").reshape(2, 5)
    # round(10 * (1 - 0.35)) = round(6.5) = 6 kept (half to even, as tf.round).
    (mask,) = targets_of(tl.PruneFraction(), 0.35, target(weight))
    assert mask.ravel().tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    # Counts are over the whole tensor, pruned weights included, and masks only
    # shrink: a target below the current sparsity changes nothing.
    (again,) = targets_of(tl.PruneFraction(), 0.2, target(weight, mask))
    np.testing.assert_array_equal(again, mask)
    (more,) = targets_of(tl.PruneFraction(), 0.8, target(weight, mask))
    assert more.ravel().tolist() == [0] * 8 + [1, 1]
    # The output layer is not halved: a target is the same for every layer.
    (out,) = targets_of(tl.PruneFraction(), 0.5, target(weight, is_output=True))
    assert out.sum() == 5


def test_targets_per_layer_global_and_erk():
    small = target(np.arange(1, 5, dtype="float32").reshape(2, 2), layer="small")
    big = target(np.arange(5, 69, dtype="float32").reshape(8, 8), layer="big")
    a, b = targets_of(tl.PruneFraction(), {"small": 0.5, "big": 0.25}, small, big)
    assert (a.sum(), b.sum()) == (2, 48)
    # Global: 68 weights, 34 kept, the largest: all in the big layer, and the
    # small one keeps its largest weight, with a warning.
    with pytest.warns(UserWarning, match="small/kernel"):
        a, b = targets_of(tl.PruneFraction(scope="global"), 0.5, small, big)
    assert (a.sum(), b.sum()) == (1, 34) and a[1, 1] == 1
    # ERK: the small layer stays denser than the big one; the total is kept.
    a, b = targets_of(tl.PruneFraction(scope="erk"), 0.5, small, big)
    assert a.mean() > b.mean() and a.sum() + b.sum() == 34
    with pytest.raises(ValueError, match="scope='global'"):
        targets_of(tl.PruneFraction(scope="global"), {"small": 0.5, "big": 0.5}, small, big)
    with pytest.raises(ValueError, match="no value for layers \\['small'\\]"):
        targets_of(tl.PruneFraction(), {"big": 0.5}, small, big)
    with pytest.raises(ValueError, match="sparsity of small/kernel"):
        targets_of(tl.PruneFraction(), 1.0, small)


def test_criteria_that_cannot_aim_at_a_target_say_so():
    for criterion in (tl.StdThreshold(0.5), tl.NMSparsity(2, 4)):
        with pytest.raises(ValueError, match="cannot aim at a target sparsity"):
            criterion.check_target()
        with pytest.raises(ValueError, match="cannot aim at a target sparsity"):
            targets_of(criterion, 0.5, target(W))
    with pytest.raises(ValueError, match="per_layer and output_rate"):
        tl.PruneFraction(output_rate=0.1).check_target()
    tl.RandomPrune(seed=0).check_target()


def test_random_prune_reaches_the_same_target_count():
    weight = np.arange(1, 101, dtype="float32").reshape(10, 10)
    (mask,) = targets_of(tl.RandomPrune(seed=3), 0.7, target(weight))
    assert mask.sum() == 30 and mask[0, :3].sum() > 0


def test_erk_sparsities_follow_the_rigl_formula():
    shapes = [(3, 3, 1, 8), (3, 3, 8, 16), (400, 100), (100, 10)]
    sizes = [np.prod(s) for s in shapes]
    values = erk_sparsities(shapes, 0.9)
    kept = sum((1 - v) * n for v, n in zip(values, sizes))
    # RigL keeps n - floor(0.9 n) weights of each tensor, in total.
    assert kept == pytest.approx(sum(n - np.floor(0.9 * n) for n in sizes), rel=1e-9)
    # Density proportional to sum(shape) / prod(shape) among the layers not kept dense.
    dense = [v == 0 for v in values]
    assert dense[0]  # the first convolution would need a density above 1
    ratios = [(1 - v) / (np.sum(s) / np.prod(s)) for v, s, d in zip(values, shapes, dense) if not d]
    assert max(ratios) == pytest.approx(min(ratios))


def test_erk_scope_in_rounds_takes_rate_of_the_survivors_overall():
    small = target(np.arange(1, 5, dtype="float32").reshape(2, 2), layer="small")
    big = target(np.arange(5, 69, dtype="float32").reshape(8, 8), layer="big")
    a, b = masks(tl.PruneFraction(0.5, scope="erk"), small, big)
    assert a.sum() + b.sum() == 34 and a.mean() > b.mean()


def test_max_block_pooling_scores_a_block_by_its_largest_weight():
    weight = np.array([[0.1, 0.4], [0.1, 0.0], [0.3, 0.3], [0.3, 0.3]], dtype="float32")
    # Blocks of 2 rows: column 0 = (0.1, 0.1), (0.3, 0.3); column 1 = (0.4, 0.0), (0.3, 0.3).
    (avg,) = masks(tl.PruneFraction(0.5, output_rate=0.5, block=(2, 1)), target(weight))
    (big,) = masks(
        tl.PruneFraction(0.5, output_rate=0.5, block=(2, 1), block_pooling="max"), target(weight)
    )
    # Mean: (0.1, 0.2 | 0.3, 0.3) prunes the first blocks of both columns.
    assert avg[:2].sum() == 0 and avg[2:].all()
    # Max: (0.1, 0.4 | 0.3, 0.3) keeps the block holding 0.4.
    assert big[:2, 1].all() and big[:2, 0].sum() == 0 and big[2:].sum() == 2


def test_n_m_sparsity_keeps_n_of_every_m_inputs():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(8, 3)).astype("float32")  # [in, out]
    (mask,) = masks(tl.NMSparsity(2, 4), target(weight))
    groups = mask.T.reshape(3, 2, 4)
    assert (groups.sum(axis=-1) == 2).all()
    magnitude = np.abs(weight).T.reshape(3, 2, 4)
    kept_min = np.where(groups > 0, magnitude, np.inf).min(axis=-1)
    pruned_max = np.where(groups == 0, magnitude, -np.inf).max(axis=-1)
    assert (kept_min > pruned_max).all()
    # Convolutions group along the input channels, for each position and output.
    conv = rng.normal(size=(3, 3, 8, 4)).astype("float32")
    (mask,) = masks(tl.NMSparsity(1, 4), target(conv, layer_type="Conv2D"))
    assert (mask.reshape(3, 3, 2, 4, 4).sum(axis=3) == 1).all()


def test_n_m_sparsity_only_shrinks_and_handles_a_partial_group():
    weight = np.array([[4.0], [3.0], [2.0], [1.0], [5.0], [0.5]], dtype="float32")
    # Groups (4, 3, 2, 1) and the partial (5, 0.5): at most 2 kept in each.
    (mask,) = masks(tl.NMSparsity(2, 4), target(weight))
    assert mask.ravel().tolist() == [1, 1, 0, 0, 1, 1]
    dead = np.array([[0.0], [1], [1], [1], [1], [1]], dtype="float32")
    (mask,) = masks(tl.NMSparsity(2, 4), target(weight, dead))
    assert mask.ravel().tolist() == [0, 1, 1, 0, 1, 1]
    (again,) = masks(tl.NMSparsity(2, 4), target(weight, mask))
    np.testing.assert_array_equal(again, mask)
    with pytest.raises(ValueError, match="input dimension.*shape \\(6,\\)"):
        masks(tl.NMSparsity(2, 4), target(weight[:, 0]))
