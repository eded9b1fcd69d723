"""Selection: which units go, given their scores. One engine for every criterion.

A criterion scores units (weights, blocks, whole output units); these functions
decide which of the surviving ones to drop, and nothing else. They read
numpy arrays and never the model, so computing masks changes nothing.

- `drop_smallest`: one tensor (or group) loses `count` of its surviving units,
  those of smallest score, ties broken by position so that the count is exact.
- `drop_smallest_across`: the same over several tensors at once, as if their
  scores were concatenated (global pruning is local pruning over the
  concatenated scores), in two passes that hold one tensor's scores plus the
  surviving scores, never every tensor's weights together. The one global
  ranking: weight criteria, pruning at initialization and the unit criteria's
  pooled ranking all use it.
- `cut_of`: the score at which `count` surviving units are dropped.
- Blocks: `reduce_blocks` turns a tensor into one entry per block (its alive
  flag, or a pooled score), `expand_blocks` turns keep-flags back into a mask.
- `keep_best_across`: the other way round, the `count` best alive units of
  all tensors survive (pruning at initialization).
- How many: `count_to_drop` (a rate of the survivors, or a target sparsity by
  tfmot's `keep_count`), `rounded_count`
  (a multiple of `round_to`, keeping at least one), `shared_counts` (groups
  that must lose as many as each other).
- Which target where: `target_sparsities` (one value, a value per layer, or a
  list), `erk_sparsities` (one overall target spread over tensors by ERK),
  `round_target` (the overall target of one more round at a rate).
- `keep_n_of_m`: N:M patterns, the `n` largest of every `m` inputs.
- `keep_one`: a tensor that would lose every surviving unit keeps its best.

Masks only shrink: every result is a subset of `alive`.

Example, a selection of one's own scores:

```python
import numpy as np
from tf_lottery import selection

scores = np.array([0.3, 0.1, 0.1, 0.7])
keep, cut = selection.drop_smallest(scores, np.ones(4, bool), 2)
# keep == [True, False, False, True], cut == 0.1
```
"""

import math
import sys

import numpy as np

from tf_lottery.validators import check_choice
from tf_lottery.validators import check_fraction


def drop_smallest(scores, alive, count):
    """Keep-flags that drop exactly `count` alive units with the smallest scores.

    Ties at the cut are broken by position (the first go), so the count is
    exact; a `count` above the number of alive units drops them all.

    Args:
        scores: Array of scores, larger kept.
        alive: Boolean array of the same shape, True for surviving units.
        count: How many alive units to drop.

    Returns:
        The boolean keep-flags, a subset of `alive`, and the cut: the largest
        score dropped, or NaN if none is.
    """
    alive_count = int(np.count_nonzero(alive))
    count = min(count, alive_count)
    if count <= 0:
        return alive.copy(), math.nan
    # Where every unit survives (a first round), one plain copy of the scores
    # is cheaper than gathering them.
    survivors = scores.reshape(-1).copy() if alive_count == alive.size else scores[alive]
    cut = cut_of(survivors, count)
    del survivors
    dropped = np.less_equal(scores, cut)
    dropped &= alive
    # Units at the cut beyond `count` stay: the last ones, so the first go.
    staying = int(np.count_nonzero(dropped)) - count
    if staying > 0:
        at_cut = np.flatnonzero(dropped & (scores == cut))
        dropped.flat[at_cut[at_cut.size - staying :]] = False
    return alive & ~dropped, float(cut)


def cut_of(alive_scores, count):
    """The `count`-th smallest of `alive_scores` (a 1-D array, reordered in place)."""
    alive_scores.partition(count - 1)
    return alive_scores[count - 1]


def drop_smallest_across(parts, count, ties="first"):
    """`drop_smallest` over several tensors at once, as if their scores were one array.

    The tensors are read one at a time: a first pass gathers the surviving
    scores to find the cut, a second gives each tensor its keep-flags. In a
    large round (`_HISTOGRAM_FROM` survivors) the first pass keeps a histogram
    of the scores' high bits instead, and one more read in between gathers the
    few scores inside the bin that holds the cut, so that a round holds about
    one tensor's scores whatever the model's size.

    Args:
        parts: A callable returning a fresh iterable of `(item, scores, alive)`,
            one per tensor; it is called two or three times. `item` is handed back with the
            tensor's result, e.g. the tensor itself.
        count: How many alive units to drop over all tensors, or a callable
            `count(alive, units)` from the number of alive units and of all units.
        ties: `"first"`: ties at the cut go in tensor order, then by position,
            so that exactly `count` units go. `"all"`: every unit scoring the
            cut goes, which may be more; the unit criteria count what each group
            loses this way, then round it per group. Defaults to `"first"`.

    Yields:
        `(item, keep, cut)` per tensor, in order; `cut` is NaN if nothing is
        dropped.
    """
    check_choice(ties, "ties", ("first", "all"))
    alive_count, units, survivors, histogram = _first_pass(parts)
    if callable(count):
        count = count(alive_count, units)
    count = min(count, alive_count)
    if count > 0:
        cut, below, at_cut = _cut_across(parts, survivors, histogram, count)
        cut = float(cut)
        # How many of the units scoring the cut still go, in order; `at_cut`:
        # how many score it in the tensors still to come.
        going = alive_count if ties == "all" else count - below
    else:
        cut, going, at_cut = -np.inf, 0, 0
    del survivors
    for item, scores, alive in parts():
        if going == 0:
            keep = alive & (scores >= cut)
        elif ties == "all" or going == at_cut:  # every unit at the cut from here on goes
            keep = alive & (scores > cut)
        else:
            keep = alive & (scores > cut)
            ties_here = np.flatnonzero(alive & (scores == cut))
            keep.flat[ties_here[going:]] = True
            going = max(0, going - ties_here.size)
            at_cut = None if at_cut is None else at_cut - ties_here.size
        yield item, keep, cut if count > 0 else math.nan


# From this many surviving units on, a global round keeps a histogram of the
# scores' high bits instead of the scores themselves.
_HISTOGRAM_FROM = 1 << 22


def _first_pass(parts):
    """Reads every tensor once: how many units survive and how many there are in all.

    Also the surviving scores, or, once more than `_HISTOGRAM_FROM` survive and
    they are floats of one dtype, only a `_HighBits` histogram of them, so that
    a large round never holds every surviving score.

    Returns:
        `(alive_count, units, survivors, histogram)`: `survivors` (a list of
        1-D arrays) is `None` where the histogram took them, and both are `None`
        where a histogram took some and then met scores it cannot order (another
        dtype), so that they must be read again.
    """
    survivors, histogram, alive_count, units = [], None, 0, 0
    switch = True  # to a histogram, once there are enough survivors
    for _, scores, alive in parts():
        units += alive.size
        # A tensor whose units all survive is read as it is, not gathered.
        piece = scores.reshape(-1) if alive.all() else scores[alive]
        alive_count += piece.size
        if survivors is not None:
            survivors.append(piece)
            if switch and alive_count >= _HISTOGRAM_FROM:
                histogram = _HighBits.of(survivors)
                survivors = None if histogram else survivors
                switch = False
        elif histogram is not None and not histogram.add(piece):
            histogram = None
    return alive_count, units, survivors, histogram


def _cut_across(parts, survivors, histogram, count):
    """The `count`-th smallest surviving score of all tensors, exactly.

    From the `survivors` where they were kept; else from the `histogram`,
    which says which bin holds the cut and how many lie below that bin, so
    that a second read gathers only the scores inside that bin. Scores the bits
    cannot order (negative, mixed dtypes, a cut that is not finite) are read
    again, concatenated and partitioned.

    Returns:
        The cut, how many survivors score below it and how many score it
        (`None` where the tensors' dtypes differ: each tensor then compares
        its scores with the cut in its own dtype, so the count may differ).
    """
    if histogram is not None and histogram.orders():
        cumulative = np.cumsum(histogram.counts)
        bin_ = int(np.searchsorted(cumulative, count))
        below_bin = int(cumulative[bin_ - 1]) if bin_ else 0
        in_bin = np.concatenate(
            [
                scores.reshape(-1)[(histogram.bits(scores) == bin_) & alive.reshape(-1)]
                for _, scores, alive in parts()
            ]
        )
        cut = cut_of(in_bin, count - below_bin)
        if np.isfinite(cut):
            below = below_bin + int(np.count_nonzero(in_bin < cut))
            return cut, below, int(np.count_nonzero(in_bin == cut))
    if survivors is None:
        survivors = [scores[alive] for _, scores, alive in parts()]
    alive_scores = np.concatenate(survivors) if survivors else np.zeros(0)
    cut = cut_of(alive_scores, count)
    below = int(np.count_nonzero(alive_scores < cut))
    if len({s.dtype for s in survivors}) > 1:
        return cut, below, None
    return cut, below, int(np.count_nonzero(alive_scores == cut))


class _HighBits:
    """A histogram of the high 16 bits of floats of one IEEE dtype.

    Non-negative floats (magnitudes, random draws) order as their bit patterns
    do, so the bins order as the values: `orders()` says whether no sign bit
    was seen.
    """

    def __init__(self, dtype):
        self.dtype = dtype
        self.counts = np.zeros(1 << 16, np.int64)
        self._step = dtype.itemsize // 2
        self._first = self._step - 1 if sys.byteorder == "little" else 0

    @classmethod
    def of(cls, arrays):
        """The histogram of `arrays`, or `None` unless they are floats of one dtype."""
        dtype = arrays[0].dtype
        if dtype not in (np.float16, np.float32, np.float64) or not dtype.isnative:
            return None
        histogram = cls(dtype)
        return histogram if all(histogram.add(a) for a in arrays) else None

    def bits(self, array):
        """The high 16 bits of each float of `array`, flat, as a uint16 view."""
        return np.ascontiguousarray(array).reshape(-1).view(np.uint16)[self._first :: self._step]

    def add(self, array):
        """Counts `array`; False, counting nothing, if it has another dtype."""
        if array.dtype != self.dtype:
            return False
        self.counts += np.bincount(self.bits(array), minlength=1 << 16)
        return True

    def orders(self):
        return not self.counts[1 << 15 :].any()


def keep_best_across(scores, alive, count):
    """Keep-flags, one array per tensor, for the `count` best alive units of all tensors.

    Ties at the cut are broken by position, so exactly `count` survive (or every
    alive unit, if fewer). Scores are compared in float64.

    Args:
        scores: One array of scores per tensor, larger kept.
        alive: One boolean array per tensor, True for surviving units.
        count: How many alive units survive over all tensors.
    """

    def parts():
        for s, a in zip(scores, alive):
            yield None, np.asarray(s, np.float64), a

    return [keep for _, keep, _ in drop_smallest_across(parts, lambda n, _: n - count)]


def count_to_drop(alive, units, rate=None, sparsity=None):
    """How many of `alive` units to drop, out of `units` in all.

    `rate` of the survivors (rounded half to even, as Python's `round`), or,
    with a target `sparsity`, as many as leave `keep_count(units, sparsity)`
    (zero or fewer when the tensor is already that sparse: masks only shrink).
    """
    if sparsity is None:
        return round(rate * alive)
    return alive - keep_count(units, sparsity)


def keep_count(units, sparsity):
    """How many of `units` a tensor keeps at a target `sparsity`.

    tfmot's rule, `max(round(units * (1 - sparsity)), 1)`, computed in float32
    with round-half-to-even as tfmot does, so that the same schedule keeps the
    same number of weights.
    """
    kept = np.round(np.float32(units) * (np.float32(1) - np.float32(sparsity)))
    return max(int(kept), 1)


def rounded_count(alive, count, round_to=1):
    """How many of `alive` units to drop when `count` would go: at least one is kept,
    and the number kept is rounded up to a multiple of `round_to` (or all of them)."""
    kept = max(1, alive - count)
    kept = min(alive, math.ceil(kept / round_to) * round_to)
    return alive - kept


def shared_counts(counts, ties):
    """`counts`, one per group, with the counts of groups that share a tie made equal.

    Groups with the same tie (any hashable; `None` is none) must lose as many
    units as each other: the blocks of one KerasHub backbone share one
    `intermediate_dim`. Each of them gets the mean of their counts, rounded
    half to even, so the total stays about what it was.

    Example:

    ```python
    shared_counts([24, 8, 3], ["backbone", "backbone", None])  # [16, 16, 3]
    ```
    """
    tied = {}
    for count, tie in zip(counts, ties):
        if tie is not None:
            tied.setdefault(tie, []).append(count)
    return [
        count if tie is None else round(sum(tied[tie]) / len(tied[tie]))
        for count, tie in zip(counts, ties)
    ]


def target_sparsities(tensors, sparsity):
    """One target sparsity per tensor, from one value, a dict by layer name, or a list.

    Args:
        tensors: The `(layer, weight)` names of the tensors, in order; a layer
            may have several.
        sparsity: A fraction in [0, 1) for every tensor, a dict from layer name
            to a fraction (every layer named), or a list with one fraction per
            tensor.

    Returns:
        A list of floats, one per tensor.
    """
    layers = [layer for layer, _ in tensors]
    if isinstance(sparsity, dict):
        missing = sorted(set(layers) - set(sparsity))
        if missing:
            raise ValueError(
                f"The target sparsity names no value for layers {missing}. Give every "
                f"pruned layer a value. Received: sparsity={sparsity!r}"
            )
        values = [sparsity[layer] for layer in layers]
    elif isinstance(sparsity, (list, tuple)):
        if len(sparsity) != len(tensors):
            raise ValueError(
                f"Expected one target sparsity per pruned tensor, {len(tensors)} in all. "
                "Pass one value, a dict from layer name to value, or a list of "
                f"{len(tensors)}. Received: a list of {len(sparsity)}, sparsity={sparsity!r}"
            )
        values = list(sparsity)
    else:
        values = [sparsity] * len(tensors)
    return [
        float(check_fraction(value, f"sparsity of {layer}/{weight}", allow_zero=True))
        for (layer, weight), value in zip(tensors, values)
    ]


def round_target(alive, units, rate):
    """The overall target sparsity of one more round that prunes `rate` of the survivors.

    `1 - (1 - s)(1 - rate)`, with s the current sparsity, `1 - alive / units`.
    """
    now = 1 - alive / units
    return 1 - (1 - now) * (1 - rate)


def erk_sparsities(shapes, sparsity, power_scale=1.0):
    """Spreads an overall target sparsity over tensors by Erdős–Rényi-kernel scaling.

    Evci et al. 2020 (RigL): a tensor of shape (k_1, ..., k_n) gets a density
    proportional to ((k_1 + ... + k_n) / (k_1 · ... · k_n)) ** power_scale, so
    small layers stay denser than large ones, with the factor chosen so that the
    tensors together keep `1 - sparsity` of their weights. A tensor whose
    density would exceed 1 is kept dense and the factor is found again for the
    others, as RigL does.

    Args:
        shapes: Shapes of the tensors, in order.
        sparsity: The overall target, in [0, 1).
        power_scale: Exponent on the ratio; below 1 makes the spread gentler.
            Defaults to `1.0` (ERK as published).

    Returns:
        A list of sparsities, one per shape.
    """
    check_fraction(sparsity, "sparsity", allow_zero=True)
    sizes = [int(np.prod(shape)) for shape in shapes]
    raw = [(float(np.sum(shape)) / size) ** power_scale for shape, size in zip(shapes, sizes)]
    dense = set()
    while True:
        # With the dense tensors D fixed, eps·Σ_{i∉D} raw_i·n_i keeps what the
        # target allows: Σ_{i∉D} (n_i − zeros_i) − Σ_{i∈D} zeros_i.
        zeros = [int(np.floor(sparsity * size)) for size in sizes]
        kept = sum(n - z for i, (n, z) in enumerate(zip(sizes, zeros)) if i not in dense)
        kept -= sum(z for i, z in enumerate(zeros) if i in dense)
        divisor = sum(r * n for i, (r, n) in enumerate(zip(raw, sizes)) if i not in dense)
        eps = kept / divisor if divisor else 0.0
        largest = max((r for i, r in enumerate(raw) if i not in dense), default=0.0)
        if largest * eps <= 1:
            break
        dense |= {i for i, r in enumerate(raw) if r == largest and i not in dense}
    return [0.0 if i in dense else 1.0 - eps * r for i, r in enumerate(raw)]


def reduce_blocks(array, block, reduce):
    """Reduces a 2-D array over `(rows, columns)` blocks; the last blocks may be partial.

    The padding is zero (False), so `np.any`, `np.sum` and, on magnitudes,
    `np.max` see only the block's own entries.
    """
    r, c = block
    rows, cols = array.shape
    padded = np.zeros((-(-rows // r) * r, -(-cols // c) * c), dtype=array.dtype)
    padded[:rows, :cols] = array
    blocks = padded.reshape(padded.shape[0] // r, r, padded.shape[1] // c, c)
    return reduce(blocks, axis=(1, 3))


def expand_blocks(keep, block, shape):
    """The element mask of `shape` from keep-flags per block (inverse of `reduce_blocks`)."""
    if block == (1, 1):
        return keep
    r, c = block
    return np.repeat(np.repeat(keep, r, axis=0), c, axis=1)[: shape[0], : shape[1]]


def keep_n_of_m(scores, alive, n, m):
    """Keep-flags for the `n` largest alive scores of every `m` consecutive inputs.

    The groups run along the second-to-last axis (the input axis of Dense and
    convolution kernels); a last group shorter than `m` keeps at most `n`, and
    a group with fewer than `n` survivors keeps them all. Ties go to the earlier
    input.
    """
    scores = np.where(alive, scores, -np.inf)
    rows = np.moveaxis(scores, -2, -1)
    inputs = rows.shape[-1]
    pad = [(0, 0)] * (rows.ndim - 1) + [(0, -inputs % m)]
    groups = np.pad(rows, pad, constant_values=-np.inf)
    groups = groups.reshape(*groups.shape[:-1], -1, m)
    order = np.argsort(-groups, axis=-1, kind="stable")
    rank = np.argsort(order, axis=-1, kind="stable")
    keep = (rank < n).reshape(*rows.shape[:-1], -1)[..., :inputs]
    return np.moveaxis(keep, -1, -2) & alive


def keep_one(keep, scores, alive):
    """`keep` (a subset of `alive`), with the best alive unit kept if none would be.

    Returns:
        The keep-flags and whether a unit had to be kept that way.
    """
    keep = keep & alive
    if keep.any() or not alive.any():
        return keep, False
    keep.flat[int(np.argmax(np.where(alive, scores, -np.inf)))] = True
    return keep, True
