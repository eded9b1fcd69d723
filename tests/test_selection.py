"""The selection engine: which units go, given their scores."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from tf_lottery import selection


def test_drop_smallest_breaks_ties_by_position_and_drops_exactly_count():
    scores = np.array([0.5, 0.1, 0.1, 0.1, 0.9])
    alive = np.array([True, True, False, True, True])
    keep, cut = selection.drop_smallest(scores, alive, 2)
    np.testing.assert_array_equal(keep, [True, False, False, False, True])
    assert cut == 0.1
    keep, cut = selection.drop_smallest(scores, alive, 0)
    np.testing.assert_array_equal(keep, alive)
    assert math.isnan(cut)
    keep, _ = selection.drop_smallest(scores, alive, 9)  # more than alive: all go
    assert not keep.any()


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
    fraction=st.floats(0, 1),
)
def test_global_selection_is_local_selection_over_the_concatenated_scores(sizes, seed, fraction):
    rng = np.random.default_rng(seed)
    # Few distinct values, so that ties at the cut are common.
    scores = [rng.integers(0, 4, size).astype(np.float32) for size in sizes]
    alive = [rng.random(size) < 0.8 for size in sizes]
    count = int(fraction * sum(int(a.sum()) for a in alive))
    flat, _ = selection.drop_smallest(np.concatenate(scores), np.concatenate(alive), count)
    parts = list(
        selection.drop_smallest_across(
            lambda: ((i, s, a) for i, (s, a) in enumerate(zip(scores, alive))), count
        )
    )
    assert [i for i, _, _ in parts] == list(range(len(sizes)))
    np.testing.assert_array_equal(np.concatenate([keep for _, keep, _ in parts]), flat)


@settings(max_examples=80, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
    fraction=st.floats(0, 1),
    kind=st.sampled_from(["few", "magnitudes", "zeros", "signed", "nan", "float64", "mixed"]),
    ties=st.sampled_from(["first", "all"]),
    switch=st.sampled_from([0, 30]),
)
def test_the_histogram_finds_the_same_global_cut_as_a_partition(
    sizes, seed, fraction, kind, ties, switch
):
    # Large rounds find the cut through a histogram of the scores' high bits;
    # here it is forced on small tensors and must give what a partition gives,
    # reading the scores again where the bits do not order them (signs, NaN,
    # mixed dtypes).
    rng = np.random.default_rng(seed)
    values = {
        "few": lambda n: rng.integers(0, 4, n).astype(np.float32),
        "magnitudes": lambda n: np.abs(rng.standard_normal(n)).astype(np.float32),
        "zeros": lambda n: np.where(rng.random(n) < 0.5, 0, rng.random(n)).astype(np.float32),
        "signed": lambda n: rng.standard_normal(n).astype(np.float32),
        "nan": lambda n: np.where(rng.random(n) < 0.2, np.nan, rng.random(n)).astype(np.float32),
        "float64": lambda n: rng.random(n) * 1e-3,
        "mixed": lambda n: rng.random(n).astype(rng.choice([np.float32, np.float64])),
    }[kind]
    scores = [values(size) for size in sizes]
    alive = [rng.random(size) < 0.8 for size in sizes]
    count = int(fraction * sum(int(a.sum()) for a in alive))

    def parts():
        return ((i, s, a) for i, (s, a) in enumerate(zip(scores, alive)))

    partitioned = list(selection.drop_smallest_across(parts, count, ties))
    with pytest.MonkeyPatch.context() as patch:
        # From the first tensor on, or after a few kept ones.
        patch.setattr(selection, "_HISTOGRAM_FROM", switch)
        histogram = list(selection.drop_smallest_across(parts, count, ties))
    for (_, keep, cut), (_, expected, expected_cut) in zip(histogram, partitioned):
        np.testing.assert_array_equal(keep, expected)
        assert cut == expected_cut or (math.isnan(cut) and math.isnan(expected_cut))


def test_counts_rates_targets_and_round_to():
    assert selection.count_to_drop(5, 10, rate=0.5) == 2  # round half to even
    assert selection.count_to_drop(7, 10, rate=0.5) == 4
    assert selection.count_to_drop(10, 10, sparsity=0.75) == 8  # keeps round(2.5) = 2
    assert selection.count_to_drop(3, 10, sparsity=0.5) == -2  # already sparser
    assert selection.rounded_count(20, 6, round_to=8) == 4  # 14 kept -> 16
    assert selection.rounded_count(5, 5) == 4  # one is kept


def test_keep_one_keeps_the_best_alive_unit_only_when_none_would_survive():
    scores = np.array([0.3, 0.9, 0.5])
    alive = np.array([True, False, True])
    keep, forced = selection.keep_one(np.zeros(3, bool), scores, alive)
    np.testing.assert_array_equal(keep, [False, False, True])
    assert forced
    keep, forced = selection.keep_one(np.array([True, True, False]), scores, alive)
    np.testing.assert_array_equal(keep, [True, False, False])  # masks only shrink
    assert not forced


def test_blocks_reduce_with_a_partial_last_block_and_expand_back():
    mask = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1]], bool)
    alive = selection.reduce_blocks(mask, (2, 2), np.any)
    np.testing.assert_array_equal(alive, [[True, False], [False, True]])
    np.testing.assert_array_equal(
        selection.expand_blocks(alive, (2, 2), mask.shape),
        [[1, 1, 0], [1, 1, 0], [0, 0, 1]],
    )


def test_n_of_m_keeps_the_largest_of_each_group_of_inputs():
    scores = np.array([[0.1], [0.4], [0.4], [0.2], [0.9]])  # groups of 4 inputs: 4 + 1
    keep = selection.keep_n_of_m(scores, np.ones_like(scores, bool), 2, 4)
    np.testing.assert_array_equal(keep.ravel(), [False, True, True, False, True])


def test_global_selection_with_ties_all_drops_every_unit_that_scores_the_cut():
    scores = [np.array([0.2, 0.5, 0.2]), np.array([0.2, 0.9])]
    alive = [np.ones(3, bool), np.array([True, False])]

    def parts():
        return ((i, s, a) for i, (s, a) in enumerate(zip(scores, alive)))

    exact = [keep for _, keep, _ in selection.drop_smallest_across(parts, 2)]
    np.testing.assert_array_equal(np.concatenate(exact), [0, 1, 0, 1, 0])
    every = [keep for _, keep, _ in selection.drop_smallest_across(parts, 2, ties="all")]
    np.testing.assert_array_equal(np.concatenate(every), [0, 1, 0, 0, 0])


def test_target_sparsities_spread_one_value_a_dict_or_a_list_and_name_what_is_wrong():
    tensors = [("fc1", "kernel"), ("fc1", "bias"), ("out", "kernel")]
    assert selection.target_sparsities(tensors, 0.5) == [0.5, 0.5, 0.5]
    assert selection.target_sparsities(tensors, {"fc1": 0.8, "out": 0}) == [0.8, 0.8, 0.0]
    assert selection.target_sparsities(tensors, [0.1, 0.2, 0.3]) == [0.1, 0.2, 0.3]
    with pytest.raises(ValueError, match=r"no value for layers \['out'\]"):
        selection.target_sparsities(tensors, {"fc1": 0.8})
    with pytest.raises(ValueError, match="one target sparsity per pruned tensor, 3 in all"):
        selection.target_sparsities(tensors, [0.1, 0.2])
    with pytest.raises(ValueError, match="sparsity of out/kernel"):
        selection.target_sparsities(tensors, [0.1, 0.2, 1.5])


def test_a_round_target_prunes_rate_of_the_survivors():
    assert selection.round_target(100, 100, 0.2) == pytest.approx(0.2)
    assert selection.round_target(50, 100, 0.2) == pytest.approx(0.6)  # 1 - 0.5 * 0.8


def test_keep_best_across_keeps_exactly_count_of_all_tensors():
    scores = [np.array([0.3, 0.1]), np.array([0.3, 0.9, 0.2])]
    alive = [np.ones(2, bool), np.array([True, True, False])]
    keep = selection.keep_best_across(scores, alive, 2)
    np.testing.assert_array_equal(np.concatenate(keep), [0, 0, 1, 1, 0])  # a tie: the first goes
