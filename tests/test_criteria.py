"""Exact masks of each criterion on small hand-made tensors."""

import math

import numpy as np
import pytest

import tf_lottery as tl
from tf_lottery.criteria import PruneTarget


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
    ],
)
def test_bad_arguments_name_themselves(make, match):
    with pytest.raises(ValueError, match=match):
        make()


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
