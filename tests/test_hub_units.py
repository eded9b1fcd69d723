"""Feed-forward units of KerasHub transformer blocks: pruned whole, then removed by `shrink`.

Each model is built from a tiny config with random weights (tests/hub_models.py).
`UnitNorm` must zero whole feed-forward units (up and gate columns, biases, down
rows), as many in every block of a Backbone, each block its own lowest-scoring
ones; `shrink` must rebuild the model with the smaller `intermediate_dim`, keep
its class, predict the same, and a shrunk CausalLM must generate the same tokens.
"""

import warnings

import numpy as np
import pytest

import keras
import tf_lottery as tl
from tf_lottery import hub_units
from tf_lottery.shrink import NothingToShrink

keras_hub = pytest.importorskip("keras_hub")
from hub_models import MODELS  # noqa: E402
from hub_models import grouped_query  # noqa: E402
from hub_models import SEQ  # noqa: E402

H = keras_hub.models

# wrap() names KerasHub's PositionEmbedding as not pruned; that is not what is tested here.
pytestmark = pytest.mark.filterwarnings("ignore:wrap\\(\\) prunes no weight:UserWarning")


BACKBONES = {name: lambda f=f: f().backbone for name, f in MODELS.items()}
BACKBONES.update(
    mistral=lambda: grouped_query(H.MistralBackbone), qwen=lambda: grouped_query(H.QwenBackbone)
)


def _inputs(model, batch=3, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 50, (batch, SEQ)).astype("int32")
    padding = np.ones((batch, SEQ), bool)
    padding[:, -2:] = False
    x = {"token_ids": tokens, "padding_mask": padding}
    if "segment_ids" in model.input:
        x["segment_ids"] = np.zeros_like(tokens)
    return x


def _numpy(variable):
    return keras.ops.convert_to_numpy(variable.value)


def _masks(model):
    """Every mask of `model`, by layer path, the kernel's alone where a layer has several."""
    return {
        w.layer.path: w.masks.get("kernel", m.mask)
        for w in tl.find_wrappers(model)
        for m in w.masked_weights
    }


def _pruned_units(block, masks):
    """The units of `block` whose up/gate columns are masked, checked against the down rows."""
    units = block.units
    pruned = [
        set(np.flatnonzero(~_numpy(masks[layer.path]).reshape(-1, units).any(axis=0)))
        for layer in block.up
    ]
    down = _numpy(masks[block.down.path]).reshape(units, -1)
    pruned.append(set(np.flatnonzero(~down.any(axis=1))))
    assert all(p == pruned[0] for p in pruned), pruned  # one unit: up, gate and down together
    return pruned[0]


def _scores(block):
    """UnitNorm's scores: each projection's column L2 norms over their mean, summed."""
    total = 0
    for layer in block.up:
        norms = np.linalg.norm(_numpy(layer.kernel).reshape(-1, block.units), axis=0)
        total = total + norms / norms.mean()
    return total


def _quiet_prune(model, criterion, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.prune(model, criterion, **kwargs)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_the_table_locates_the_feed_forward_units_of_every_block_kind(name):
    backbone = BACKBONES[name]()
    blocks = hub_units.feed_forward_blocks(backbone)
    assert len(blocks) == backbone.num_layers
    for block in blocks:
        assert block.backbone is backbone
        units = backbone.get_config()[block.kind.config_key] // block.kind.per_unit
        assert block.units == units
        assert all(layer.kernel.shape[-1] == units for layer in block.up)
        assert block.down.kernel.shape[0] == units
        assert block.down.kernel.shape[-1] == backbone.hidden_dim


@pytest.mark.parametrize("name", sorted(MODELS))
def test_unit_norm_zeroes_whole_units_the_lowest_scoring_of_each_block(name):
    model = tl.wrap(MODELS[name]())
    blocks = hub_units.feed_forward_blocks(model)
    expected = [
        set(np.argsort(_scores(block), kind="stable")[: block.units // 2]) for block in blocks
    ]
    _quiet_prune(model, tl.UnitNorm(0.5))
    masks = _masks(model)
    for block, lowest in zip(blocks, expected):
        pruned = _pruned_units(block, masks)
        assert pruned == lowest
        for layer in block.up:
            columns = _numpy(layer.kernel).reshape(-1, block.units)[:, sorted(pruned)]
            assert not columns.any()
            if getattr(layer, "bias", None) is not None:
                assert not _numpy(layer.bias)[sorted(pruned)].any()
        assert not _numpy(block.down.kernel)[sorted(pruned)].any()
    # Nothing outside the blocks' feed-forward layers: a pooler's or head's width
    # is hidden_dim or a class count, which no config change could remove.
    ffn = {layer.path for block in blocks for layer in (*block.up, block.down)}
    for wrapper in tl.find_wrappers(model):
        if wrapper.layer.path not in ffn:
            assert all(_numpy(m.mask).all() for m in wrapper.masked_weights), wrapper.layer.path


def _skew(block, small):
    """Makes all but the last quarter of `block`'s units small in every up projection."""
    for layer in block.up:
        kernel = _numpy(layer.kernel).reshape(-1, block.units).copy()
        kernel[:, : block.units * 3 // 4] *= small
        layer.kernel.assign(kernel.reshape(layer.kernel.shape))


def test_global_scope_prunes_as_many_units_in_every_block_each_its_own():
    model = tl.wrap(MODELS["gpt2"]())
    first, second = hub_units.feed_forward_blocks(model)
    # Scored globally, block 0 would lose its 24 small units and block 1 only 8.
    _skew(first, 0.01)
    lowest = [set(np.argsort(_scores(b), kind="stable")[:16]) for b in (first, second)]
    _quiet_prune(model, tl.UnitNorm(0.5, scope="global"))
    masks = _masks(model)
    assert [_pruned_units(b, masks) for b in (first, second)] == lowest


@pytest.mark.parametrize("round_to", [1, 8])
def test_every_block_keeps_as_many_units_round_after_round(round_to):
    model = tl.wrap(MODELS["llama"]())
    blocks = hub_units.feed_forward_blocks(model)
    criterion = tl.UnitNorm(0.3, round_to=round_to)
    for _ in range(2):
        _quiet_prune(model, criterion)
        masks = _masks(model)
        kept = {b.units - len(_pruned_units(b, masks)) for b in blocks}
        assert len(kept) == 1
        assert kept.pop() % round_to == 0


def test_per_layer_rates_that_differ_across_the_blocks_are_refused():
    model = tl.wrap(MODELS["gpt2"]())
    before = {path: _numpy(mask).copy() for path, mask in _masks(model).items()}
    path = "transformer_layer_0/feedforward_intermediate_dense"
    with pytest.raises(ValueError, match="share one intermediate_dim"):
        _quiet_prune(model, tl.UnitNorm(0.5, per_layer={path: 0.25}))
    for key, mask in _masks(model).items():
        np.testing.assert_array_equal(_numpy(mask), before[key])


def test_unit_std_threshold_reads_per_layer_by_the_paths_that_prune_checks():
    model = tl.wrap(MODELS["gpt2"]())
    paths = [f"transformer_layer_{i}/feedforward_intermediate_dense" for i in (0, 1)]
    _quiet_prune(model, tl.UnitStdThreshold(0.0, per_layer={path: 1.0 for path in paths}))
    masks = _masks(model)
    pruned = [len(_pruned_units(b, masks)) for b in hub_units.feed_forward_blocks(model)]
    assert pruned[0] == pruned[1] > 0  # s = 0 elsewhere prunes nothing


def test_unit_norm_says_once_that_attention_heads_stay_whole():
    model = tl.wrap(MODELS["gpt2"]())
    criterion = tl.UnitNorm(0.25)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tl.prune(model, criterion)
        tl.prune(model, criterion)
    lines = [str(w.message) for w in caught if "attention heads" in str(w.message)]
    assert len(lines) == 1
    assert "head_dim = hidden_dim // num_heads" in lines[0]
    assert "feed-forward units" in lines[0]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shrink_rebuilds_a_smaller_model_of_the_same_class_that_predicts_the_same(name):
    model = tl.wrap(MODELS[name]())
    _quiet_prune(model, tl.UnitNorm(0.5))
    plain = tl.strip(model)
    small = tl.shrink(model)
    assert type(small) is type(model)
    config = small.backbone.get_config()
    assert config["intermediate_dim"] == model.backbone.get_config()["intermediate_dim"] // 2
    assert small.count_params() < plain.count_params()
    x = _inputs(model)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(small(x)), keras.ops.convert_to_numpy(plain(x)), atol=1e-5
    )


def test_shrink_of_a_backbone_alone_gives_a_backbone():
    backbone = tl.wrap(MODELS["gpt2"]().backbone)
    _quiet_prune(backbone, tl.UnitNorm(0.25))
    small = tl.shrink(backbone)
    assert type(small) is type(backbone)
    assert small.get_config()["intermediate_dim"] == 24
    report = tl.shrink_report(backbone, small)
    assert report.params_before == tl.strip(backbone).count_params()
    assert report.params_after == small.count_params() < report.params_before
    assert report["transformer_layer_1/feedforward_intermediate_dense"].units_after == 24


@pytest.mark.parametrize("name", ["gpt2", "gemma"])
def test_a_shrunk_causal_lm_generates_the_tokens_of_the_pruned_one(name):
    model = tl.wrap(MODELS[name]())
    _quiet_prune(model, tl.UnitNorm(0.5))
    small = tl.shrink(model)
    prompt = {
        "token_ids": _inputs(model, batch=2)["token_ids"],
        "padding_mask": np.zeros((2, SEQ), bool),
    }
    prompt["padding_mask"][:, :3] = True
    outputs = []
    for lm in (model, small):
        lm.compile(sampler="greedy")
        outputs.append(lm.generate(prompt, max_length=SEQ, stop_token_ids=None))
    assert outputs[1]["token_ids"].shape == (2, SEQ)
    np.testing.assert_array_equal(outputs[1]["token_ids"], outputs[0]["token_ids"])


def test_blocks_pruned_unevenly_lose_as_many_as_the_fewest_with_a_warning():
    model = tl.wrap(MODELS["gpt2"]())
    _quiet_prune(model, tl.UnitNorm(0.25))
    block = "transformer_layer_0/feedforward_intermediate_dense"
    _quiet_prune(model, tl.UnitNorm(0.5), layers=[block])
    with pytest.warns(UserWarning, match=r"removes 8 feed-forward units from each of the 2"):
        small = tl.shrink(model)
    assert small.backbone.get_config()["intermediate_dim"] == 24


def test_shrink_of_a_model_without_dead_units_says_what_to_do():
    model = tl.wrap(MODELS["llama"]())
    _quiet_prune(model, tl.PruneFraction(0.5))
    with pytest.raises(NothingToShrink, match=r"2 of the 2 blocks have none.*UnitNorm"):
        tl.shrink(model)


@keras.saving.register_keras_serializable(package="test_hub_units")
class TransformerEncoder(keras.layers.Layer):
    """A user's own block that shares a KerasHub block's class name and nothing else."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.up = keras.layers.Dense(16, activation="relu")
        self.down = keras.layers.Dense(8)

    def call(self, x):
        return x + self.down(self.up(x))


def test_a_users_layer_named_like_a_keras_hub_block_is_no_block():
    inputs = keras.Input((4, 8))
    x = keras.layers.Flatten()(TransformerEncoder()(inputs))
    hidden = keras.layers.Dense(12, activation="relu", name="hidden")(x)
    model = tl.wrap(keras.Model(inputs, keras.layers.Dense(3)(hidden)))
    assert hub_units.feed_forward_blocks(model) == []
    _quiet_prune(model, tl.UnitNorm(0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = tl.shrink(model)
    assert small.get_layer("hidden").units == 6


def test_a_shrunk_causal_lm_keeps_a_preprocessor_that_still_tokenizes():
    # A tokenizer's vocabulary is an asset, not config: a copy through the config
    # alone (strip's, then shrink's) would have a preprocessor without one.
    vocabulary = {"<|endoftext|>": 0, "a": 1, "b": 2, "Ġ": 3, "ab": 4, "Ġa": 5, "Ġb": 6}
    tokenizer = H.GPT2Tokenizer(vocabulary=vocabulary, merges=["a b", "Ġ a", "Ġ b"])
    preprocessor = H.GPT2CausalLMPreprocessor(tokenizer, sequence_length=SEQ)
    model = tl.wrap(H.GPT2CausalLM(MODELS["gpt2"]().backbone, preprocessor=preprocessor))
    _quiet_prune(model, tl.UnitNorm(0.5))
    small = tl.shrink(model)
    assert small.preprocessor.tokenizer.vocabulary == vocabulary
    outputs = []
    for lm in (model, small):
        lm.compile(sampler="greedy")
        outputs.append(lm.generate("ab a", max_length=SEQ))
    assert outputs[1] == outputs[0]


@pytest.mark.parametrize("name", ["mistral", "qwen"])
def test_shrink_of_the_other_gated_backbones_predicts_the_same(name):
    backbone = tl.wrap(BACKBONES[name]())
    _quiet_prune(backbone, tl.UnitNorm(0.5))
    plain = tl.strip(backbone)
    small = tl.shrink(backbone)
    assert type(small) is type(plain)
    assert small.get_config()["intermediate_dim"] == plain.get_config()["intermediate_dim"] // 2
    assert small.count_params() < plain.count_params()
    x = _inputs(plain)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(small(x)), keras.ops.convert_to_numpy(plain(x)), atol=1e-5
    )
