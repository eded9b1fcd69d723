"""Feed-forward units of KerasHub transformer blocks: pruned whole, then removed by `shrink`.

Each model is built from a tiny config with random weights (tests/hub_models.py).
`UnitNorm` must zero whole feed-forward units (up and gate columns, biases, down
rows), as many in every block of a Backbone, each block its own lowest-scoring
ones; `shrink` must rebuild the model with the smaller `intermediate_dim`, keep
its class, predict the same, and a shrunk CausalLM must generate the same tokens.
In Gemma's blocks the key/value groups of the attention (each with its query
heads) are units too, as many pruned in every block, and `shrink` sets fewer
heads in the config.
"""

import warnings

import numpy as np
import pytest

import keras
import tf_lottery as tl
from tf_lottery.structured import hub_units
from tf_lottery.structured.shrink import NothingToShrink

keras_hub = pytest.importorskip("keras_hub")
from hub_models import MODELS  # noqa: E402
from hub_models import gemma  # noqa: E402
from hub_models import grouped_query  # noqa: E402
from hub_models import SEQ  # noqa: E402

H = keras_hub.models

# wrap() names KerasHub's PositionEmbedding as not pruned; that is not what is tested here.
pytestmark = pytest.mark.filterwarnings("ignore:wrap\\(\\) prunes no weight:UserWarning")


BACKBONES = {name: lambda f=f: f().backbone for name, f in MODELS.items()}
BACKBONES.update(
    mistral=lambda: grouped_query(H.MistralBackbone), qwen=lambda: grouped_query(H.QwenBackbone)
)
# Gemma with key/value groups to prune: 2 groups of 2 query heads, or 4 single heads.
GEMMAS = {"gemma_kv2": lambda: gemma(2), "gemma_kv4": lambda: gemma(4)}
# The projections of a Gemma block's attention, by their names in its path.
ATTENTION = ("query", "key", "value", "attention_output")


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


@pytest.mark.parametrize("name", ["gpt2", "gemma", *GEMMAS])
def test_a_shrunk_causal_lm_generates_the_tokens_of_the_pruned_one(name):
    model = tl.wrap({**MODELS, **GEMMAS}[name]())
    _quiet_prune(model, tl.UnitNorm(0.5))
    small = tl.shrink(model)
    if name in GEMMAS:  # heads went too: the cache has fewer key/value heads
        groups = model.backbone.num_key_value_heads
        assert small.backbone.num_key_value_heads == groups // 2
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


def _groups(block):
    """The query, key, value and output kernels of a Gemma block's attention, each as
    (key/value groups, entries): query heads of a group are contiguous."""
    attention = block.layer.attention
    groups = attention.num_key_value_heads
    layers = [attention.query_dense, attention.key_dense, attention.value_dense]
    return groups, layers, attention.output_dense


def _group_scores(block):
    """UnitNorm's scores of a block's key/value groups: the L2 norms of each group's
    query, key and value slices, each over its mean, summed."""
    groups, layers, _ = _groups(block)
    total = 0
    for layer in layers:
        norms = np.linalg.norm(_numpy(layer.kernel).reshape(groups, -1), axis=1)
        total = total + norms / norms.mean()
    return total


def _pruned_groups(block, masks):
    """The key/value groups of `block` masked whole: query, key, value and output rows."""
    groups, layers, output = _groups(block)
    pruned = [
        set(np.flatnonzero(~_numpy(masks[layer.path]).reshape(groups, -1).any(axis=1)))
        for layer in (*layers, output)
    ]
    assert all(p == pruned[0] for p in pruned), pruned  # one group: all four together
    return pruned[0]


@pytest.mark.parametrize("name", sorted(GEMMAS))
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_unit_norm_prunes_as_many_key_value_groups_in_every_gemma_block_its_lowest(name, scope):
    model = tl.wrap(GEMMAS[name]())
    blocks = hub_units.feed_forward_blocks(model)
    first = _groups(blocks[0])
    for layer in first[1]:
        # Scored together, block 0 would lose all but one of its groups, block 1 none.
        kernel = _numpy(layer.kernel).reshape(first[0], -1).copy()
        kernel[1:] *= 0.01
        layer.kernel.assign(kernel.reshape(layer.kernel.shape))
    groups = first[0]
    expected = [set(np.argsort(_group_scores(b), kind="stable")[: groups // 2]) for b in blocks]
    _quiet_prune(model, tl.UnitNorm(0.5, scope=scope))
    masks = _masks(model)
    assert [_pruned_groups(b, masks) for b in blocks] == expected
    for block, pruned in zip(blocks, expected):
        _, layers, output = _groups(block)
        for layer in (*layers, output):
            assert not _numpy(layer.kernel).reshape(groups, -1)[sorted(pruned)].any()


def test_a_pruned_key_value_group_adds_exactly_zero():
    model = tl.wrap(GEMMAS["gemma_kv2"]())
    _quiet_prune(model, tl.UnitNorm(0.5))
    masks = _masks(model)
    blocks = hub_units.feed_forward_blocks(model)
    x = _inputs(model)
    before = keras.ops.convert_to_numpy(model(x))
    rng = np.random.default_rng(1)

    def scramble(groups_of):
        for block in blocks:
            groups, layers, _ = _groups(block)
            for layer in layers:
                kernel = _numpy(layer.kernel).reshape(groups, -1).copy()
                rows = sorted(groups_of(block))
                kernel[rows] = rng.normal(size=kernel[rows].shape)
                layer.kernel.assign(kernel.reshape(layer.kernel.shape))

    pruned = {id(b): _pruned_groups(b, masks) for b in blocks}
    assert all(len(p) == 1 for p in pruned.values())
    scramble(lambda block: pruned[id(block)])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x)), before)
    scramble(lambda block: set(range(2)) - pruned[id(block)])  # a kept group does count
    assert not np.allclose(keras.ops.convert_to_numpy(model(x)), before)


@pytest.mark.parametrize("round_to", [1, 2])
def test_every_gemma_block_keeps_as_many_key_value_groups_round_after_round(round_to):
    model = tl.wrap(GEMMAS["gemma_kv4"]())
    blocks = hub_units.feed_forward_blocks(model)
    criterion = tl.UnitNorm(0.5, round_to=round_to)
    kept = []
    for _ in range(3):
        _quiet_prune(model, criterion)
        masks = _masks(model)
        counts = {4 - len(_pruned_groups(b, masks)) for b in blocks}
        assert len(counts) == 1
        kept.append(counts.pop())
    # Half of 4, then half of 2; one group stays in every block (two, rounded up to 2).
    assert kept == ([2, 1, 1] if round_to == 1 else [2, 2, 2])


def test_per_layer_naming_a_gemma_projection_is_refused_and_changes_nothing():
    model = tl.wrap(GEMMAS["gemma_kv2"]())
    before = {path: _numpy(mask).copy() for path, mask in _masks(model).items()}
    with pytest.raises(ValueError, match="decoder_block_0/attention/query"):
        _quiet_prune(model, tl.UnitNorm(0.5, per_layer={"decoder_block_0/attention/query": 0.9}))
    for key, mask in _masks(model).items():
        np.testing.assert_array_equal(_numpy(mask), before[key])


def test_unit_activation_prunes_the_groups_whose_output_is_used_least():
    model = tl.wrap(GEMMAS["gemma_kv2"]())
    blocks = hub_units.feed_forward_blocks(model)
    for block in blocks:
        # Group 0: large query, key and value slices, but output rows near zero.
        groups, layers, output = _groups(block)
        for layer, scale in [*((layer, 10.0) for layer in layers), (output, 1e-3)]:
            kernel = _numpy(layer.kernel).reshape(groups, -1).copy()
            kernel[0] *= scale
            layer.kernel.assign(kernel.reshape(layer.kernel.shape))
    assert all(np.argmin(_group_scores(b)) == 1 for b in blocks)  # UnitNorm would prune 1
    data = _inputs(model, batch=8, seed=3)
    _quiet_prune(model, tl.UnitActivation(0.5, data=data))
    masks = _masks(model)
    assert [_pruned_groups(b, masks) for b in blocks] == [{0}, {0}]
    small = tl.shrink(model)
    assert small.backbone.num_key_value_heads == 1


@pytest.mark.parametrize("part", ["backbone", "causal_lm"])
def test_shrink_of_gemma_sets_fewer_heads_and_predicts_the_same(part):
    model = GEMMAS["gemma_kv2"]()
    model = tl.wrap(model.backbone if part == "backbone" else model)
    _quiet_prune(model, tl.UnitNorm(0.5))
    plain = tl.strip(model)
    small = tl.shrink(model)
    assert type(small) is type(plain)
    backbone = small if part == "backbone" else small.backbone
    config = backbone.get_config()
    assert (config["num_query_heads"], config["num_key_value_heads"]) == (2, 1)
    assert (config["intermediate_dim"], config["head_dim"]) == (16, 4)
    # Per block: query and output 4*16*4 -> 2*16*4, key and value 2*16*4 -> 1*16*4,
    # gates 2*16*16 -> 2*16*8, down 16*16 -> 8*16, two norms of 16; and the
    # 50*16 embedding and the final norm.
    assert (plain.count_params(), small.count_params()) == (3952, 2416)
    x = _inputs(plain)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(small(x)), keras.ops.convert_to_numpy(plain(x)), atol=1e-5
    )
    report = tl.shrink_report(model, small)
    assert report.params_before == 3952 and report.params_after == 2416
    query = report["decoder_block_1/attention/query"]
    assert (query.units_before, query.units_after) == (4, 2)
    down = report["decoder_block_1/ffw_linear"]
    assert (down.units_before, down.units_after) == (16, 8)


def test_shrink_of_gemma_groups_alone_keeps_the_feed_forward_units():
    model = tl.wrap(GEMMAS["gemma_kv4"]())
    attention = [f"decoder_block_{i}/attention/{part}" for i in (0, 1) for part in ATTENTION]
    _quiet_prune(model, tl.UnitNorm(0.5), layers=attention)
    small = tl.shrink(model)
    config = small.backbone.get_config()
    assert (config["num_query_heads"], config["num_key_value_heads"]) == (2, 2)
    assert config["intermediate_dim"] == 32
    x = _inputs(model)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(small(x)),
        keras.ops.convert_to_numpy(tl.strip(model)(x)),
        atol=1e-5,
    )


def test_gemma_blocks_with_unevenly_pruned_groups_lose_as_many_with_a_warning():
    model = tl.wrap(GEMMAS["gemma_kv4"]())
    _quiet_prune(model, tl.UnitNorm(0.25))
    first = [f"decoder_block_0/attention/{part}" for part in ATTENTION]
    _quiet_prune(model, tl.UnitNorm(0.5), layers=first)
    masks = _masks(model)
    blocks = hub_units.feed_forward_blocks(model)
    assert [len(_pruned_groups(b, masks)) for b in blocks] == [3, 1]
    with pytest.warns(UserWarning, match=r"removes 1 key/value groups from each of the 2"):
        small = tl.shrink(model)
    assert small.backbone.num_key_value_heads == 3


def test_gemma_heads_are_units_so_only_the_other_blocks_are_warned_about():
    lines = []
    for model in (tl.wrap(GEMMAS["gemma_kv2"]()), tl.wrap(MODELS["llama"]())):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tl.prune(model, tl.UnitNorm(0.25))
        lines.append([str(w.message) for w in caught if "attention heads" in str(w.message)])
    assert lines[0] == []
    assert len(lines[1]) == 1 and "LlamaTransformerDecoder" in lines[1][0]
    assert "Gemma" not in lines[1][0]
