"""Wanda and SparseGPT: the references' masks and weights, layer layouts, calibration."""

import gc
import weakref

import keras
import numpy as np
import pytest
import torch

import tf_lottery
from conftest import open_name_scopes
from tests import reference_oneshot as reference
from tf_lottery import calibration
from tf_lottery.oneshot import sparsegpt_pruned
from tf_lottery.oneshot import wanda_pruned


def activations(samples, tokens, features, seed, dead=()):
    """Calibration inputs whose features differ in scale, as a language model's do."""
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.normal(size=features))
    x = rng.normal(size=(samples, tokens, features)) * scale
    x[..., list(dead)] = 0
    return x


def _reference_layer(weight, x, statistics):
    """A float64 torch Linear holding `weight`, and the reference's statistics of `x`."""
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=torch.float64)
    layer.weight.data = torch.tensor(weight)
    state = statistics(layer, torch.float64)
    for sample in torch.tensor(x):
        state.add_batch(sample.unsqueeze(0))
    return layer, state


def _reference_n_m(n_m):
    """The references' N:M arguments: their `prune_n` counts the weights pruned of each m."""
    return (0, 0) if n_m is None else (n_m[1] - n_m[0], n_m[1])


def reference_wanda(weight, x, sparsity, n_m):
    layer, stats = _reference_layer(weight, x, reference.WrappedGPT)
    return reference.wanda_mask(layer.weight.data, stats.scaler_row, sparsity, *_reference_n_m(n_m))


def reference_sparsegpt(weight, x, sparsity, n_m):
    layer, state = _reference_layer(weight, x, reference.SparseGPT)
    prune_n, prune_m = _reference_n_m(n_m)
    mask = state.fasterprune(sparsity, prune_n, prune_m, blocksize=128, percdamp=0.01)
    return mask.numpy(), layer.weight.data.numpy()


SETTINGS = [(0.3, None), (0.5, None), (0.7, None), (0.5, (2, 4)), (0.5, (4, 8))]


@pytest.mark.parametrize("sparsity,n_m", SETTINGS)
def test_wanda_masks_are_the_references_in_float64(sparsity, n_m):
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(24, 40))
    x = activations(3, 10, 40, seed=2)
    expected = reference_wanda(weight, x, sparsity, n_m).numpy()
    squared_norms = np.sum(x.reshape(-1, 40) ** 2, axis=0)
    pruned = wanda_pruned(weight, squared_norms, sparsity, n_m)
    np.testing.assert_array_equal(pruned, expected)
    if n_m is None:
        assert (pruned.sum(axis=1) == int(40 * sparsity)).all()


@pytest.mark.parametrize("sparsity,n_m", SETTINGS)
def test_sparsegpt_masks_and_weights_are_the_references_in_float64(sparsity, n_m):
    # 320 inputs: two full blocks of 128 and a short one; two dead input columns.
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(20, 320))
    x = activations(4, 30, 320, seed=4, dead=(5, 200))
    expected_mask, expected_weight = reference_sparsegpt(weight, x, sparsity, n_m)
    rows = x.reshape(-1, 320)
    # The reference's scale, H = 2/N · XᵀX over N sequences: a dead input's diagonal
    # of 1 enters the dampening relative to it.
    pruned, updated = sparsegpt_pruned(weight, rows.T @ rows * 2 / len(x), sparsity, n_m)
    np.testing.assert_array_equal(pruned, expected_mask)
    np.testing.assert_allclose(updated, expected_weight, rtol=1e-9, atol=1e-12)
    assert (updated[:, [5, 200]] == 0).all()
    assert (updated[pruned] == 0).all()


def test_a_short_last_group_keeps_at_most_n_where_the_references_differ():
    # 2:4 over 10 inputs: the last group has 2. The references prune m - n of it
    # (torch.topk of 2 of 2 columns); tf_lottery, as NMSparsity and tfmot, keeps
    # at most n, so a short group is left whole.
    rng = np.random.default_rng(15)
    weight = rng.normal(size=(6, 10))
    x = activations(2, 8, 10, seed=16)
    squared_norms = np.sum(x.reshape(-1, 10) ** 2, axis=0)
    pruned = wanda_pruned(weight, squared_norms, 0.5, (2, 4))
    np.testing.assert_array_equal(pruned[:, :8], reference_wanda(weight, x, 0.5, (2, 4))[:, :8])
    assert not pruned[:, 8:].any()
    rows = x.reshape(-1, 10)
    chosen, _ = sparsegpt_pruned(weight, rows.T @ rows, 0.5, (2, 4))
    reference_mask, _ = reference_sparsegpt(weight, x, 0.5, (2, 4))
    assert reference_mask[:, 8:].all() and not chosen[:, 8:].any()


@pytest.mark.parametrize(
    "equation,output_shape,input_shape,kernel_shape,matrix",
    [
        ("btd,ndh->btnh", (3, 4, 16), (2, 3, 64), (4, 64, 16), (64, 64)),  # Gemma-style query
        ("btnh,nhd->btd", (3, 64), (2, 3, 4, 16), (4, 16, 64), (64, 64)),  # its output
        ("abc,cde->abde", (3, 2, 8), (2, 3, 16), (16, 2, 8), (16, 16)),  # MHA's query
        ("abcd,cde->abe", (3, 16), (2, 3, 2, 8), (2, 8, 16), (16, 16)),  # MHA's output
        ("...b,bc->...c", (5,), (2, 3, 6), (6, 5), (6, 5)),
        ("ab,bc->ac", (5,), (2, 6), (6, 5), (6, 5)),
    ],
)
def test_einsum_kernels_read_as_the_matrix_their_inputs_multiply(
    equation, output_shape, input_shape, kernel_shape, matrix
):
    layer = keras.layers.EinsumDense(equation, output_shape=output_shape)
    layer.build(input_shape)
    assert tuple(layer.kernel.shape) == kernel_shape
    layout = calibration.kernel_layout(layer)
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    assert layout.matrix_shape(kernel.shape) == matrix
    x = np.random.default_rng(0).normal(size=input_shape).astype("float32")
    rows, _ = calibration._input_rows(keras.ops.convert_to_tensor(x), layout)
    expected = keras.ops.convert_to_numpy(layer(x)).reshape(-1, matrix[1])
    got = keras.ops.convert_to_numpy(rows) @ calibration.to_matrix(kernel, layout)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(
        calibration.from_matrix(calibration.to_matrix(kernel, layout), layout, kernel.shape),
        kernel,
    )


def test_a_batched_einsum_kernel_is_refused():
    with pytest.raises(ValueError, match="neither contracted nor outputs"):
        calibration.einsum_layout("abc,bcd->abd".replace("abd", "abcd"))


def stack(sizes, activation="relu"):
    """A Functional MLP with Dense layers d0, d1, ... (no bias: the torch twin has none)."""
    inputs = keras.Input((sizes[0],))
    x = inputs
    for i, units in enumerate(sizes[1:]):
        last = i == len(sizes) - 2
        x = keras.layers.Dense(
            units, activation=None if last else activation, use_bias=False, name=f"d{i}"
        )(x)
    return keras.Model(inputs, x)


def torch_twin(model, sizes):
    blocks = []
    for i in range(len(sizes) - 1):
        linear = torch.nn.Linear(sizes[i], sizes[i + 1], bias=False)
        kernel = keras.ops.convert_to_numpy(model.get_layer(f"d{i}").kernel)
        linear.weight.data = torch.tensor(kernel.T.copy())
        last = i == len(sizes) - 2
        blocks.append(linear if last else torch.nn.Sequential(linear, torch.nn.ReLU()))
    return blocks


def masks_of(model):
    return [keras.ops.convert_to_numpy(w.masks["kernel"]) for w in tf_lottery.find_wrappers(model)]


def prune_both_ways(method, n_m, seed):
    """An MLP pruned by tf_lottery and, in torch, by the references' block loop.

    Returns:
        (the wrapped Keras model, the reference's masks, its torch Linears).
    """
    sizes = [32, 24, 16, 8]
    model = stack(sizes)
    x = activations(40, 1, 32, seed=seed)[:, 0].astype("float32")
    criterion = {"wanda": tf_lottery.Wanda, "sparsegpt": tf_lottery.SparseGPT}[method]
    pruned = tf_lottery.wrap(model)
    tf_lottery.prune(pruned, criterion(0.5, data=x, n_m=n_m, batch_size=16))
    prune_n, prune_m = (0, 0) if n_m is None else (2, 4)
    blocks = torch_twin(model, sizes)
    # SparseGPT's reference in float64: its updates, unlike Wanda's masks, carry
    # rounding from layer to layer.
    dtype = torch.float64 if method == "sparsegpt" else torch.float32
    masks = reference.prune_blocks(blocks, torch.tensor(x), method, 0.5, prune_n, prune_m, dtype)
    return pruned, masks, [b if isinstance(b, torch.nn.Linear) else b[0] for b in blocks]


@pytest.mark.parametrize("n_m", [None, (2, 4)])
def test_wanda_on_a_model_prunes_layer_by_layer_as_the_reference(n_m):
    pruned, expected, _ = prune_both_ways("wanda", n_m, seed=5)
    for mask, reference_mask in zip(masks_of(pruned), expected):
        np.testing.assert_array_equal(mask == 0, reference_mask.numpy().T)


@pytest.mark.parametrize("n_m", [None, (2, 4)])
def test_sparsegpt_on_a_model_updates_layer_by_layer_as_the_reference(n_m):
    pruned, expected, linears = prune_both_ways("sparsegpt", n_m, seed=6)
    for i, (mask, reference_mask) in enumerate(zip(masks_of(pruned), expected)):
        np.testing.assert_array_equal(mask == 0, reference_mask.numpy().T)
        kernel = keras.ops.convert_to_numpy(pruned.get_layer(f"prune_d{i}").layer.kernel)
        np.testing.assert_allclose(kernel, linears[i].weight.data.numpy().T, atol=2e-5)


def attention_model(tokens=6, width=16, heads=2):
    inputs = keras.Input((tokens, width))
    x = keras.layers.Dense(width, name="embed")(inputs)
    x = keras.layers.MultiHeadAttention(heads, width // heads, name="mha")(x, x)
    return keras.Model(inputs, keras.layers.Dense(width, name="ffn")(x))


@pytest.mark.parametrize("criterion", [tf_lottery.Wanda, tf_lottery.SparseGPT])
def test_every_kernel_of_multi_head_attention_is_pruned_along_its_inputs(criterion):
    model = attention_model()
    x = activations(12, 6, 16, seed=7).astype("float32")
    for n_m in (None, (2, 4)):
        pruned = tf_lottery.wrap(model)
        tf_lottery.prune(pruned, criterion(0.5, data=x, n_m=n_m))
        mha = pruned.get_layer("prune_mha")
        for masked in mha.masked_weights:
            owner = calibration.kernel_owner(mha, masked.variable)
            layout = calibration.kernel_layout(owner)
            alive = calibration.to_matrix(keras.ops.convert_to_numpy(masked.mask), layout) > 0
            inputs = alive.shape[0]
            if n_m is None and criterion is tf_lottery.Wanda:
                assert (alive.sum(axis=0) == inputs - inputs // 2).all(), masked.name
            elif n_m is not None:
                groups = alive.reshape(inputs // 4, 4, -1).sum(axis=1)
                assert (groups == 2).all(), masked.name
            else:
                assert alive.mean() == pytest.approx(0.5, abs=0.05), masked.name
            kernel = keras.ops.convert_to_numpy(masked.variable)
            assert (kernel[keras.ops.convert_to_numpy(masked.mask) == 0] == 0).all()


class _FeedForward(keras.layers.Layer):
    """A block of one's own whose Dense layers are wrapped inside it, as in KerasHub blocks."""

    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.up = tf_lottery.PruneWrapper(keras.layers.Dense(4 * width, activation="relu"))
        self.down = tf_lottery.PruneWrapper(keras.layers.Dense(width))

    def call(self, x):
        return x + self.down(self.up(x))


class _Stack(keras.Model):
    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        # Named: the default, "__feed_forward", is no TensorFlow graph scope, and
        # Keras 3.15 then leaves this model's scope open on its first call
        # (tests/conftest.py, `_no_name_scope_left_open`).
        self.blocks = [_FeedForward(width, name=f"block{i}") for i in range(2)]

    def call(self, x):
        for block in self.blocks:
            x = block(x)
        return x


@pytest.mark.parametrize("criterion", [tf_lottery.Wanda, tf_lottery.SparseGPT])
def test_layers_wrapped_inside_blocks_of_a_subclassed_model_are_reached(criterion):
    model = _Stack(8)
    x = activations(16, 3, 8, seed=18).astype("float32")
    dense = keras.ops.convert_to_numpy(model(x))
    tf_lottery.prune(model, criterion(0.5, data=x))
    wrappers = tf_lottery.find_wrappers(model)
    assert len(wrappers) == 4
    for wrapper in wrappers:
        mask = keras.ops.convert_to_numpy(wrapper.masks["kernel"])
        assert (mask == 0).mean() == pytest.approx(0.5, abs=0.03)
    assert not np.allclose(keras.ops.convert_to_numpy(model(x)), dense)


@pytest.mark.parametrize("criterion", [tf_lottery.Wanda, tf_lottery.SparseGPT])
def test_pruning_a_subclassed_model_leaves_no_name_scope_open(criterion):
    model = _Stack(8)
    x = activations(16, 3, 8, seed=18).astype("float32")
    model(x)
    tf_lottery.prune(model, criterion(0.5, data=x))
    assert open_name_scopes() == []


def layer_inputs(model, name, x):
    return keras.ops.convert_to_numpy(keras.Model(model.input, model.get_layer(name).input)(x))


def reconstruction_error(model, pruned, name, x):
    """‖X W − X Ŵ‖² of one layer on the dense model's inputs to it."""
    inputs = layer_inputs(model, name, x).astype(np.float64)
    dense = keras.ops.convert_to_numpy(model.get_layer(name).kernel).astype(np.float64)
    kernel = keras.ops.convert_to_numpy(pruned.get_layer("prune_" + name).layer.kernel)
    return float(np.sum((inputs @ dense - inputs @ kernel.astype(np.float64)) ** 2))


def prune_one_layer(model, name, criterion):
    pruned = tf_lottery.wrap(model)
    tf_lottery.prune(pruned, criterion, layers=[name])
    return pruned


def normalized_stack(sizes, seed):
    """Dense layers d0, d1, ..., each after an RMS normalization whose scales differ
    by feature, as in a LLaMA- or Gemma-style block: every layer's inputs have
    features of unequal size.

    RMS, not mean-centering LayerNormalization, and scales within a factor of
    a few: centered inputs make XᵀX singular, and scales spread over orders of
    magnitude make it ill-conditioned; in both SparseGPT's dampening (1% of the
    mean diagonal, which the largest features set) swamps the small features,
    and SparseGPT can lose to Wanda (docs/oneshot.md).
    """
    rng = np.random.default_rng(seed)
    inputs = keras.Input((sizes[0],))
    x = inputs
    for i, units in enumerate(sizes[1:]):
        norm = keras.layers.RMSNormalization(name=f"norm{i}")
        x = norm(x)
        norm.scale.assign(np.exp(0.5 * rng.normal(size=x.shape[-1])).astype("float32"))
        x = keras.layers.Dense(units, name=f"d{i}")(x)
    return keras.Model(inputs, x)


@pytest.mark.parametrize("n_m", [None, (2, 4)])
def test_per_layer_error_sparsegpt_at_most_wanda_at_most_magnitude(n_m):
    model = normalized_stack([48, 32, 32, 8], seed=8)
    x = activations(64, 1, 48, seed=8)[:, 0].astype("float32")
    for name in ("d0", "d1", "d2"):
        magnitude = (
            # output_rate: PruneFraction halves the last layer's rate by default.
            tf_lottery.PruneFraction(0.5, output_rate=0.5)
            if n_m is None
            else tf_lottery.NMSparsity(*n_m)
        )
        errors = [
            reconstruction_error(model, prune_one_layer(model, name, criterion), name, x)
            for criterion in (
                tf_lottery.SparseGPT(0.5, data=x, n_m=n_m),
                tf_lottery.Wanda(0.5, data=x, n_m=n_m),
                magnitude,
            )
        ]
        assert errors[0] <= errors[1] <= errors[2], (name, errors)


def test_wanda_clearly_beats_magnitude_when_a_few_input_features_are_large():
    model = stack([64, 32])
    rng = np.random.default_rng(9)
    x = rng.normal(size=(256, 64)).astype("float32")
    x[:, :4] *= 30.0  # outlier features, as large language models have
    wanda = reconstruction_error(
        model, prune_one_layer(model, "d0", tf_lottery.Wanda(0.5, data=x)), "d0", x
    )
    magnitude = reconstruction_error(
        model,
        prune_one_layer(model, "d0", tf_lottery.PruneFraction(0.5, output_rate=0.5)),
        "d0",
        x,
    )
    assert wanda < 0.2 * magnitude, (wanda, magnitude)


def padded_model(tokens=5, width=12):
    features = keras.Input((tokens, width), name="features")
    padding = keras.Input((tokens,), name="padding_mask")
    hidden = keras.layers.Dense(8, name="d0")(features)
    out = keras.layers.Multiply()([hidden, keras.layers.Reshape((tokens, 1))(padding)])
    return keras.Model({"features": features, "padding_mask": padding}, out)


@pytest.mark.parametrize("criterion", [tf_lottery.Wanda, tf_lottery.SparseGPT])
@pytest.mark.parametrize("source", ["padding_mask", "sample_weight"])
def test_padded_positions_do_not_count(criterion, source):
    model = padded_model()
    rng = np.random.default_rng(10)
    x = activations(16, 5, 12, seed=11).astype("float32")
    mask = (rng.random((16, 5)) < 0.6).astype("float32")
    mask[:, 0] = 1
    garbage = np.where(mask[..., None] > 0, x, 1e3 * rng.normal(size=x.shape)).astype("float32")
    inputs = {"features": garbage, "padding_mask": mask}
    data = inputs if source == "padding_mask" else (inputs, None, mask)
    pruned = tf_lottery.wrap(model)
    tf_lottery.prune(pruned, criterion(0.5, data=data))
    real = x[mask > 0].astype(np.float64)
    kernel = keras.ops.convert_to_numpy(model.get_layer("d0").kernel).astype(np.float64)
    if criterion is tf_lottery.Wanda:
        expected = wanda_pruned(kernel.T, np.sum(real**2, axis=0), 0.5)
    else:
        expected, _ = sparsegpt_pruned(kernel.T, real.T @ real * 2 / len(x), 0.5)
    np.testing.assert_array_equal(masks_of(pruned)[0] == 0, expected.T)


def test_weights_pruned_before_stay_pruned_and_count():
    model = stack([32, 16])
    x = activations(32, 1, 32, seed=12)[:, 0].astype("float32")
    for criterion in (tf_lottery.Wanda(0.5, data=x), tf_lottery.SparseGPT(0.5, data=x)):
        pruned = tf_lottery.wrap(model)
        tf_lottery.prune(pruned, tf_lottery.PruneFraction(0.3))
        before = masks_of(pruned)[0]
        tf_lottery.prune(pruned, criterion)
        after = masks_of(pruned)[0]
        assert (after[before == 0] == 0).all()
        assert (after == 0).mean() == pytest.approx(0.5, abs=0.04)
        kernel = keras.ops.convert_to_numpy(pruned.get_layer("prune_d0").layer.kernel)
        assert (kernel[after == 0] == 0).all()


def test_statistics_streamed_in_batches_equal_one_pass():
    model = stack([12, 6])
    x = activations(20, 1, 12, seed=13)[:, 0].astype("float32")
    layer = model.get_layer("d0")
    for gram in (False, True):
        whole = calibration.collect(
            model, calibration.calibration_batches(x, 20, 20, "test"), [layer], gram
        )[0]
        parts = calibration.collect(
            model, calibration.calibration_batches(x, 20, 3, "test"), [layer], gram
        )[0]
        np.testing.assert_allclose(parts.sum, whole.sum, rtol=1e-5)
        assert parts.rows == whole.rows == 20
        expected = x.astype(np.float64).T @ x if gram else np.sum(x.astype(np.float64) ** 2, 0)
        np.testing.assert_allclose(whole.sum, expected, rtol=1e-5)
    assert "call" not in vars(layer)


@pytest.mark.parametrize("criterion", [tf_lottery.Wanda, tf_lottery.SparseGPT])
def test_one_group_of_statistics_at_a_time(criterion, monkeypatch):
    live = weakref.WeakSet()
    alive_at_each_pass = []

    class Tracked(calibration.InputStatistics):
        def __init__(self, *args):
            super().__init__(*args)
            live.add(self)

    collect = calibration.collect

    def spy(*args, **kwargs):
        gc.collect()
        alive_at_each_pass.append(len(live))
        return collect(*args, **kwargs)

    monkeypatch.setattr(calibration, "InputStatistics", Tracked)
    monkeypatch.setattr(calibration, "collect", spy)
    model = attention_model()
    pruned = tf_lottery.wrap(model)
    x = activations(8, 6, 16, seed=17).astype("float32")
    tf_lottery.prune(pruned, criterion(0.5, data=x))
    # The check that every layer is called, then embed, mha (four kernels), ffn.
    assert alive_at_each_pass == [0, 0, 0, 0]


class _Failing(keras.Model):
    """Calls its Dense layer, then fails."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3)

    def call(self, x, training=False):
        self.dense(x)
        raise RuntimeError("the forward pass failed")


def test_hooks_are_removed_when_the_forward_pass_fails():
    model = _Failing()
    model.dense.build((None, 4))
    batch = calibration.CalibrationBatch(np.zeros((2, 4), "float32"), None)
    with pytest.raises(RuntimeError, match="forward pass failed"):
        calibration.collect(model, [batch], [model.dense], True)
    assert "call" not in vars(model.dense)


def test_a_dataset_of_batches_and_samples_limit():
    x = activations(30, 1, 12, seed=14)[:, 0].astype("float32")
    batches = calibration.calibration_batches(
        [(x[i : i + 8], np.zeros(8)) for i in range(0, 30, 8)], 20, 4, "test"
    )
    assert [len(b.inputs) for b in batches] == [8, 8, 4]
    np.testing.assert_array_equal(np.concatenate([b.inputs for b in batches]), x[:20])


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"sparsity": 1.0}, "sparsity"),
        ({"sparsity": -0.1}, "sparsity"),
        ({"n_m": (4, 2)}, "n_m"),
        ({"n_m": (2,)}, "n_m"),
        ({"samples": 0}, "samples"),
        ({"batch_size": 0}, "batch_size"),
        ({"data": None}, "data"),
    ],
)
@pytest.mark.parametrize("criterion", [tf_lottery.Wanda, tf_lottery.SparseGPT])
def test_bad_arguments_are_named(criterion, kwargs, argument):
    kwargs = {"data": np.zeros((4, 3), "float32"), **kwargs}
    with pytest.raises(ValueError, match=argument):
        criterion(**kwargs)


def test_sparsegpt_needs_whole_groups_per_block():
    with pytest.raises(ValueError, match="blocksize"):
        tf_lottery.SparseGPT(data=np.zeros((4, 3)), n_m=(2, 4), blocksize=30)


@pytest.mark.parametrize("criterion", [tf_lottery.Wanda, tf_lottery.SparseGPT])
def test_an_embedding_is_refused_and_nothing_changes(criterion):
    inputs = keras.Input((5,), dtype="int32")
    x = keras.layers.Embedding(20, 8, name="embedding")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(4, name="d0")(x))
    pruned = tf_lottery.wrap(model)
    before = [keras.ops.convert_to_numpy(v) for v in pruned.weights]
    tokens = np.random.default_rng(0).integers(0, 20, size=(8, 5))
    with pytest.raises(ValueError, match="embedding"):
        tf_lottery.prune(pruned, criterion(0.5, data=tokens))
    for value, variable in zip(before, pruned.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), value)
    tf_lottery.prune(pruned, criterion(0.5, data=tokens), layers=["d0"])
    assert tf_lottery.sparsity(pruned)["d0"].sparsity == pytest.approx(0.5, abs=0.05)


class _FirstLayerOnly(keras.Model):
    """Holds a wrapped model, but its forward pass calls only its first layer."""

    def __init__(self, kept):
        super().__init__()
        self.kept = kept

    def call(self, x, training=False):
        return self.kept.get_layer("prune_d0")(x)


def test_a_layer_the_forward_pass_never_calls_is_an_error_and_nothing_changes():
    model = _FirstLayerOnly(tf_lottery.wrap(stack([8, 6, 4])))
    x = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    model(x)
    before = masks_of(model)
    with pytest.raises(ValueError, match=r"does not call \['d1/kernel'\]"):
        tf_lottery.prune(model, tf_lottery.Wanda(0.5, data=x))
    for mask, old in zip(masks_of(model), before):
        np.testing.assert_array_equal(mask, old)


def test_calibration_of_padding_only_is_an_error():
    model = padded_model()
    inputs = {
        "features": np.ones((4, 5, 12), "float32"),
        "padding_mask": np.zeros((4, 5), "float32"),
    }
    with pytest.raises(ValueError, match="every position is padding"):
        tf_lottery.prune(tf_lottery.wrap(model), tf_lottery.Wanda(0.5, data=inputs))


def test_config_round_trip_leaves_the_data_out():
    criterion = tf_lottery.SparseGPT(0.6, data=np.zeros((2, 3)), n_m=(2, 4), blocksize=64)
    config = criterion.get_config()
    assert "data" not in config
    assert config == {
        "sparsity": 0.6,
        "n_m": [2, 4],
        "samples": 128,
        "batch_size": 8,
        "blocksize": 64,
        "percdamp": 0.01,
    }


def test_the_example_of_docs_oneshot_runs():
    tokens = keras.Input((64,), dtype="int32")
    x = keras.layers.Embedding(256, 128, name="embedding")(tokens)
    h = keras.layers.MultiHeadAttention(4, 32, name="attn")(x, x, use_causal_mask=True)
    x = keras.layers.LayerNormalization()(x + h)
    h = keras.layers.Dense(512, activation="gelu", name="up")(x)
    x = keras.layers.LayerNormalization()(x + keras.layers.Dense(128, name="down")(h))
    model = keras.Model(tokens, keras.layers.Dense(256, name="lm_head")(x))
    calibration = np.random.default_rng(0).integers(0, 256, size=(8, 64))
    for criterion in (
        tf_lottery.SparseGPT(0.5, data=calibration),
        tf_lottery.Wanda(data=calibration, n_m=(2, 4)),
    ):
        pruned = tf_lottery.wrap(model, exclude=["embedding", "lm_head"])
        tf_lottery.prune(pruned, criterion)
        report = tf_lottery.sparsity(pruned)
        for name in ("attn", "up", "down"):
            assert report[name].sparsity == pytest.approx(0.5, abs=0.01), name


def _tiny_causal_lm(name):
    pytest.importorskip("keras_hub")
    import hub_models

    return hub_models.MODELS[name]()


@pytest.mark.filterwarnings("ignore:wrap\\(\\) prunes no weight of .*PositionEmbedding")
@pytest.mark.parametrize("name", ["gpt2", "gemma"])
@pytest.mark.parametrize("criterion", [tf_lottery.Wanda, tf_lottery.SparseGPT])
def test_keras_hub_blocks_wrapped_in_place_are_pruned_along_their_inputs(name, criterion):
    model = tf_lottery.wrap(_tiny_causal_lm(name))
    rng = np.random.default_rng(19)
    padding = np.ones((8, 8), bool)
    padding[:, -3:] = False
    data = {"token_ids": rng.integers(1, 50, (8, 8)).astype("int32"), "padding_mask": padding}
    # Every layer but the token embedding, which is also the (tied) output head.
    blocks = [
        w
        for w in tf_lottery.find_wrappers(model)
        if not isinstance(w.layer, keras.layers.Embedding)
    ]
    assert len(blocks) == {"gpt2": 6, "gemma": 14}[name]
    tf_lottery.prune(model, criterion(0.5, data=data), layers=[w.target_name for w in blocks])
    for wrapper in blocks:
        for masked in wrapper.masked_weights:
            owner = calibration.kernel_owner(wrapper, masked.variable)
            layout = calibration.kernel_layout(owner)
            mask = keras.ops.convert_to_numpy(masked.mask)
            kernel = keras.ops.convert_to_numpy(masked.variable)
            alive = calibration.to_matrix(mask, layout) > 0
            if criterion is tf_lottery.Wanda:
                assert (alive.sum(axis=0) == alive.shape[0] - alive.shape[0] // 2).all()
            else:
                assert alive.mean() == pytest.approx(0.5, abs=0.05)
            assert (kernel[mask == 0] == 0).all()
    others = [w for w in tf_lottery.find_wrappers(model) if w not in blocks]
    for wrapper in others:
        for masked in wrapper.masked_weights:
            assert keras.ops.convert_to_numpy(masked.mask).all(), wrapper.target_name
    assert np.isfinite(keras.ops.convert_to_numpy(model(data))).all()
