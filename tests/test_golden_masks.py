"""Golden masks: every criterion's exact masks and thresholds, pinned before a refactor.

Each case prunes a tiny model with fixed weights (multiples of 1/8 from a fixed
numpy seed, so magnitudes tie often, and shapes that leave partial blocks and
partial N:M groups) for two rounds, and compares every mask, unit mask and
threshold with the ones written in `golden_masks.npz`. The file was written by
the code as it was before scores and selection were separated; a refactor that
changes rounding or tie-breaking anywhere shows up here as the case and the
tensor that differ.

The masks are computed with numpy from the same float32 values under every
backend, so the same file holds for tensorflow, jax and torch.

To write the file again (only when a change of masks is intended, and said in
the commit): `KERAS_BACKEND=tensorflow python tests/test_golden_masks.py`.
"""

import io
import os
import warnings

import keras
import numpy as np
import pytest

import tf_lottery as tl
from tf_lottery.files import write_atomically
from tf_lottery.wrapper import find_rewind_wrappers

L = keras.layers
GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden_masks.npz")
BLOCKS = ((1, 1), (1, 4), (4, 1), "tflite-float", "tflite-int8")


def _mixed():
    # fc1's kernel is 18x7: 4-row blocks leave a partial block of 2 rows, 16-row
    # blocks one of 2, 4-column blocks one of 3 columns. The convolution's
    # 3 inputs make a partial N:M group.
    inputs = keras.Input((4, 3))
    x = L.Flatten()(L.Conv1D(6, 2, name="conv")(inputs))
    x = L.Dense(5, name="fc2")(L.Dense(7, name="fc1")(x))
    return keras.Model(inputs, L.Dense(3, name="out")(x))


def _units():
    inputs = keras.Input((5, 5, 2))
    a = L.ReLU()(
        L.BatchNormalization(name="bn1")(L.Conv2D(6, 3, padding="same", name="c1")(inputs))
    )
    b = L.BatchNormalization(name="bn2")(L.Conv2D(6, 3, padding="same", name="c2")(a))
    x = L.Add()([a, b])
    x = L.BatchNormalization(name="bn3")(L.DepthwiseConv2D(3, padding="same", name="dw")(x))
    x = L.BatchNormalization(name="bn4")(L.Conv2D(5, 1, name="c3")(x))
    x = L.GlobalAveragePooling2D()(x)
    x = L.ReLU()(L.BatchNormalization(name="bn5")(L.Dense(7, name="fc")(x)))
    return keras.Model(inputs, L.Dense(3, name="out")(x))


def _fixed_weights(model):
    """Multiples of 1/8 in [-1, 1] from a fixed seed, with ties of norm and |γ| made on purpose."""
    rng = np.random.default_rng(18)
    for layer in model.layers:
        for variable in layer.weights:
            if "moving" in variable.path:
                continue
            value = rng.integers(-8, 9, size=variable.shape) / 8
            if layer.name == "c3" and variable.name == "kernel":
                value[..., 1] = -value[..., 0]  # two units of equal norm
            if variable.name == "gamma":
                value[1] = -value[0]  # two channels of equal |γ|
                value[3] = value[2]
            variable.assign(value.astype(variable.dtype))


_MODELS = {
    # name: (build, layers excluded from wrap)
    "mixed": (_mixed, ()),
    "dense": (_mixed, ("conv",)),  # blocks other than the TFLite modes need 2-D weights
    "units": (_units, ()),
}


def _model_for(block):
    return "dense" if block in ((1, 4), (4, 1)) else "mixed"


def _name(block):
    return block if isinstance(block, str) else "x".join(map(str, block))


def _cases():
    """(id, model, steps): `steps()` gives the rounds, (criterion, sparsity or None) each.

    One criterion instance prunes both rounds of a case, as in `IterativePruning`
    (RandomPrune's generator moves on between them).
    """
    cases = []

    def add(name, model, make, sparsities=(None, None)):
        def steps():
            criterion = make()
            return [(criterion, sparsity) for sparsity in sparsities]

        cases.append((name, model, steps))

    for block in BLOCKS:
        b, model = _name(block), _model_for(block)
        add(f"std-0.5-{b}", model, lambda block=block: tl.StdThreshold(0.5, block=block))
        add(
            f"std-1.0-fixed-{b}",
            model,
            lambda block=block: tl.StdThreshold(1.0, block=block, fixed_std=True),
        )
        for scope in ("layer", "global", "erk"):
            add(
                f"fraction-0.3-{scope}-{b}",
                model,
                lambda block=block, scope=scope: tl.PruneFraction(0.3, scope, block=block),
            )
            add(
                f"fraction-target-{scope}-{b}",
                model,
                lambda block=block, scope=scope: tl.PruneFraction(scope=scope, block=block),
                (0.5, 0.8),
            )
            add(
                f"random-0.3-{scope}-{b}",
                model,
                lambda block=block, scope=scope: tl.RandomPrune(0.3, scope, block=block, seed=7),
            )
    for block in ((1, 4), (4, 1)):
        b = _name(block)
        add(
            f"std-0.5-max-{b}",
            "dense",
            lambda block=block: tl.StdThreshold(0.5, block=block, block_pooling="max"),
        )
        for scope in ("layer", "global"):
            add(
                f"fraction-0.3-{scope}-max-{b}",
                "dense",
                lambda block=block, scope=scope: tl.PruneFraction(
                    0.3, scope, block=block, block_pooling="max"
                ),
            )
    for block in ((1, 1), (4, 1)):
        b, model = _name(block), _model_for(block)
        add(
            f"std-per-layer-{b}",
            model,
            lambda block=block: tl.StdThreshold(
                0.7, per_layer={"fc1": 0.2, "out": 1.5}, block=block
            ),
        )
        add(
            f"fraction-per-layer-{b}",
            model,
            lambda block=block: tl.PruneFraction(0.3, per_layer={"fc1": 0.5}, block=block),
        )
        add(
            f"random-per-layer-{b}",
            model,
            lambda block=block: tl.RandomPrune(0.3, per_layer={"out": 0.6}, block=block, seed=3),
        )
    for block in ((1, 1), (1, 4)):
        b, model = _name(block), _model_for(block)
        add(
            f"fraction-output-rate-{b}",
            model,
            lambda block=block: tl.PruneFraction(0.3, block=block, output_rate=0.45),
        )
        add(
            f"random-output-rate-{b}",
            model,
            lambda block=block: tl.RandomPrune(0.3, block=block, output_rate=0.45, seed=5),
        )
    # Counts of exactly half a weight: Python's round() goes to the even count.
    add("fraction-0.5-layer", "mixed", lambda: tl.PruneFraction(0.5))
    add(
        "fraction-target-per-layer",
        "mixed",
        tl.PruneFraction,
        (
            {"conv": 0.25, "fc1": 0.5, "fc2": 0.0, "out": 0.6},
            {"conv": 0.5, "fc1": 0.9, "fc2": 0.3, "out": 0.6},
        ),
    )
    add(
        "random-target-global-int8",
        "mixed",
        lambda: tl.RandomPrune(scope="global", block="tflite-int8", seed=11),
        (0.6, 0.6),
    )
    for n, m in ((2, 4), (1, 3), (3, 4)):
        add(f"nm-{n}-{m}", "mixed", lambda n=n, m=m: tl.NMSparsity(n, m))
    cases.append(
        (
            "fraction-then-nm-2-4",
            "mixed",
            lambda: [(tl.PruneFraction(0.5), None), (tl.NMSparsity(2, 4), None)],
        )
    )
    for scope in ("layer", "global"):
        for p in (1, 2):
            add(f"unitnorm-p{p}-{scope}", "units", lambda p=p, s=scope: tl.UnitNorm(0.3, p, s))
        add(
            f"unitnorm-round4-{scope}",
            "units",
            lambda s=scope: tl.UnitNorm(0.3, scope=s, round_to=4),
        )
        add(f"bnscale-0.5-{scope}", "units", lambda s=scope: tl.BatchNormScale(0.5, s))
        add(
            f"bnscale-round2-{scope}",
            "units",
            lambda s=scope: tl.BatchNormScale(0.3, s, round_to=2),
        )
    add("unitnorm-per-layer", "units", lambda: tl.UnitNorm(0.2, per_layer={"c3": 0.6, "fc": 0.5}))
    add("bnscale-per-layer", "units", lambda: tl.BatchNormScale(0.2, per_layer={"fc": 0.7}))
    for quality in (0.5, 1.0):
        add(f"unitstd-{quality}", "units", lambda q=quality: tl.UnitStdThreshold(q))
    add(
        "unitstd-per-layer-round2",
        "units",
        lambda: tl.UnitStdThreshold(0.5, per_layer={"fc": 1.5}, round_to=2),
    )
    return cases


CASES = _cases()


class _Model:
    """One wrapped model per kind, put back to its fixed state before every case."""

    def __init__(self, kind):
        build, exclude = _MODELS[kind]
        model = build()
        _fixed_weights(model)
        self.model = tl.wrap(model, exclude=exclude)
        self.state = [keras.ops.convert_to_numpy(v.value) for v in self.model.variables]

    def reset(self):
        for variable, value in zip(self.model.variables, self.state):
            variable.assign(value)
        return self.model


def _entries(model):
    """(name, 0/1 array) for every mask and unit mask, in a fixed order."""
    entries = []
    for wrapper in find_rewind_wrappers(model):
        for name, mask in getattr(wrapper, "masks", {}).items():
            entries.append((f"{wrapper.layer.name}/{name}", mask))
        if wrapper.unit_mask is not None:
            entries.append((f"{wrapper.layer.name}/unit_mask", wrapper.unit_mask))
    return [(name, keras.ops.convert_to_numpy(v.value).ravel() > 0) for name, v in entries]


def run_case(models, kind, steps):
    """The masks after each round, one flat boolean array, and the thresholds, in order."""
    model = models[kind].reset()
    names, bits, thresholds = [], [], []
    with warnings.catch_warnings():
        # "would prune every surviving weight": keeping one is part of what is pinned.
        warnings.simplefilter("ignore", UserWarning)
        for round_index, (criterion, sparsity) in enumerate(steps()):
            used = tl.prune(model, criterion, sparsity=sparsity)
            thresholds.extend(used[key] for key in sorted(used))
            for name, keep in _entries(model):
                names.extend(f"round {round_index}: {name}" for _ in range(keep.size))
                bits.append(keep)
    return names, np.concatenate(bits), np.array(thresholds, dtype=np.float64)


@pytest.fixture(scope="module")
def models():
    return {kind: _Model(kind) for kind in _MODELS}


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as archive:
        return dict(archive)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_masks_and_thresholds_are_the_golden_ones(case, models, golden):
    name, kind, steps = case
    names, bits, thresholds = run_case(models, kind, steps)
    expected = np.unpackbits(golden[f"{name}:masks"], count=int(golden[f"{name}:size"]))
    assert expected.size == bits.size, (
        f"{name}: {bits.size} mask entries, golden has {expected.size}"
    )
    wrong = np.flatnonzero(expected.astype(bool) != bits)
    assert not wrong.size, (
        f"{name}: {wrong.size} mask entries differ from the golden ones, the first in "
        f"{names[wrong[0]]} (flat index {wrong[0]}); tensors: {sorted({names[i] for i in wrong})}"
    )
    np.testing.assert_array_equal(thresholds, golden[f"{name}:thresholds"], err_msg=name)


def test_the_golden_file_holds_exactly_these_cases(golden):
    names = {key.rsplit(":", 1)[0] for key in golden}
    assert names == {c[0] for c in CASES}


def write_golden():
    """Writes `golden_masks.npz` from the code as it is now."""
    models = {kind: _Model(kind) for kind in _MODELS}
    arrays = {}
    for name, kind, steps in CASES:
        _, bits, thresholds = run_case(models, kind, steps)
        arrays[f"{name}:masks"] = np.packbits(bits)
        arrays[f"{name}:size"] = np.array(bits.size)
        arrays[f"{name}:thresholds"] = thresholds
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_atomically(GOLDEN, buffer.getvalue())
    print(f"wrote {len(CASES)} cases to {GOLDEN} ({len(buffer.getvalue())} bytes)")


if __name__ == "__main__":
    write_golden()
