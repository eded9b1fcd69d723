"""Wrapping in place: KerasHub transformers and models a config copy cannot stand for.

Each KerasHub model is built from a tiny config with random weights. For each:
the wrapped model is the user's own object and class; at least 95% of the
Dense/EinsumDense weights inside the transformer blocks are under a mask;
pruned weights stay exactly zero through `fit`; `tf_lottery.load_model` gives
the same predictions, masks and round count back, and a plain
`keras.models.load_model` the same predictions; `strip` predicts the same;
`generate()` runs on a pruned CausalLM.

keras-hub imports tensorflow-text, and so TensorFlow, in every backend's
process; the models still run on the backend KERAS_BACKEND names.
`tests/test_backends.py` checks in a fresh process that tf_lottery itself
does not import TensorFlow under JAX or PyTorch.
"""

import numpy as np
import pytest

import tf_lottery as tl
import keras
from keras import layers as L

keras_hub = pytest.importorskip("keras_hub")
from hub_models import MODELS  # noqa: E402
from hub_models import SEQ  # noqa: E402
from hub_models import bert as _bert  # noqa: E402
from hub_models import gpt2 as _gpt2  # noqa: E402

H = keras_hub.models


def _data(name, batch=4, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 50, (batch, SEQ)).astype("int32")
    padding = np.ones((batch, SEQ), bool)
    padding[:, -2:] = False
    if name == "bert":
        x = {"token_ids": tokens, "segment_ids": np.zeros_like(tokens), "padding_mask": padding}
        return x, rng.integers(0, 2, (batch,))
    return {"token_ids": tokens, "padding_mask": padding}, rng.integers(1, 50, (batch, SEQ))


def _compile(model):
    model.compile(
        keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )


def _zero_where_pruned(model):
    for wrapper in tl.find_wrappers(model):
        for masked in wrapper.masked_weights:
            weight = keras.ops.convert_to_numpy(masked.variable.value)
            mask = keras.ops.convert_to_numpy(masked.mask.value)
            assert np.all(weight[mask == 0] == 0), f"{wrapper.target_name}/{masked.name}"


def _masks(model):
    return {
        f"{w.target_name}/{m.name}": keras.ops.convert_to_numpy(m.mask.value)
        for w in tl.find_wrappers(model)
        for m in w.masked_weights
    }


def _block_kernels(model):
    """The Dense/EinsumDense kernels inside the transformer blocks, by id."""
    blocks = model.backbone.transformer_layers
    return {
        id(layer.kernel): int(np.prod(layer.kernel.shape))
        for block in blocks
        for layer in block._flatten_layers(include_self=False)
        if isinstance(layer, (L.Dense, L.EinsumDense))
    }


@pytest.mark.slow  # four models, each trained, saved, loaded, stripped and generating
@pytest.mark.parametrize("name", sorted(MODELS))
def test_keras_hub_model_prunes_trains_saves_and_strips(name, tmp_path):
    model = MODELS[name]()
    cls = type(model)
    wrapped = tl.wrap(model)
    assert wrapped is model and type(wrapped) is cls

    kernels = _block_kernels(model)
    masked = {id(m.variable) for w in tl.find_wrappers(model) for m in w.masked_weights}
    reached = sum(size for key, size in kernels.items() if key in masked)
    assert reached == sum(kernels.values())  # every one (the issue asks for 95%)

    for per_weight in (False, True):
        names = [r.layer for r in tl.sparsity(model, per_weight=per_weight).layers]
        assert len(names) == len(set(names))  # by path: never two rows with one name
    rows = [r.layer for r in tl.sparsity(model, per_weight=True).layers]
    assert any(r.endswith("_0/self_attention_layer/query/kernel") for r in rows) or any(
        r.endswith("_0/self_attention/query/kernel") or r.endswith("_0/attention/query/kernel")
        for r in rows
    ), rows

    tl.prune(model, tl.PruneFraction(0.5))
    x, y = _data(name)
    _compile(model)
    model.fit(x, y, epochs=2, batch_size=2, verbose=0)
    _zero_where_pruned(model)
    assert tl.sparsity(model).sparsity > 0.3

    expected = model.predict(x, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = tl.load_model(path, compile=False)
    assert type(loaded) is cls
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-5)
    saved_masks, loaded_masks = _masks(model), _masks(loaded)
    assert saved_masks.keys() == loaded_masks.keys()
    for key in saved_masks:
        np.testing.assert_array_equal(loaded_masks[key], saved_masks[key])
    rounds = [
        int(keras.ops.convert_to_numpy(w.pruning_round.value)) for w in tl.find_wrappers(loaded)
    ]
    assert rounds == [
        int(keras.ops.convert_to_numpy(w.pruning_round.value)) for w in tl.find_wrappers(model)
    ]

    plain = keras.models.load_model(path, compile=False)
    assert not tl.find_wrappers(plain)
    np.testing.assert_allclose(plain.predict(x, verbose=0), expected, atol=1e-5)

    stripped = tl.strip(model)
    assert type(stripped) is cls and not tl.find_wrappers(stripped)
    np.testing.assert_allclose(stripped.predict(x, verbose=0), expected, atol=1e-5)
    assert tl.find_wrappers(model)  # the wrapped model keeps its state

    if name != "bert":
        prompt = {"token_ids": x["token_ids"][:1], "padding_mask": np.zeros((1, SEQ), bool)}
        prompt["padding_mask"][:, :3] = True
        out = model.generate(prompt, max_length=SEQ, stop_token_ids=None)
        assert out["token_ids"].shape == (1, SEQ)


def test_strip_in_place_takes_the_state_off_the_model_itself(tmp_path):
    model = tl.wrap(_gpt2())
    tl.prune(model, tl.PruneFraction(0.5))
    x, _ = _data("gpt2")
    expected = model.predict(x, verbose=0)
    assert tl.strip(model, in_place=True) is model
    assert not tl.find_wrappers(model)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-6)
    for layer in model._flatten_layers():
        for variable in layer.weights:
            assert not isinstance(variable.constraint, tl.masking.MaskConstraint)
    model.save(tmp_path / "plain.keras")
    assert not tl.find_wrappers(tl.load_model(tmp_path / "plain.keras", compile=False))


def test_pruning_between_two_fits_holds_without_a_recompile():
    # On JAX the new mask must reach the compiled train step as state.
    model = tl.wrap(_gpt2())
    x, y = _data("gpt2", batch=8)
    _compile(model)
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    tl.prune(model, tl.PruneFraction(0.5))
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    _zero_where_pruned(model)
    tl.prune(model, tl.PruneFraction(0.5))
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    _zero_where_pruned(model)
    assert tl.sparsity(model).sparsity > 0.6


def test_iterative_pruning_resumes_from_a_saved_file(tmp_path):
    x, y = _data("bert", batch=8)

    def fit(model, epochs, initial_epoch=0):
        cb = tl.IterativePruning(tl.PruneFraction(0.3), every=1, rewind=None)
        model.fit(
            x,
            y,
            epochs=epochs,
            initial_epoch=initial_epoch,
            batch_size=4,
            verbose=0,
            callbacks=[cb],
        )

    keras.utils.set_random_seed(1)
    model = tl.wrap(_bert())
    _compile(model)
    fit(model, 2)
    model.save(tmp_path / "half.keras")
    resumed = tl.load_model(tmp_path / "half.keras")
    fit(resumed, 4, initial_epoch=2)
    rounds = {
        int(keras.ops.convert_to_numpy(w.pruning_round.value)) for w in tl.find_wrappers(resumed)
    }
    assert rounds == {4}
    _zero_where_pruned(resumed)
    assert tl.sparsity(resumed).sparsity == pytest.approx(1 - 0.7**4, abs=0.05)


def test_exclude_takes_paths_and_patterns():
    model = tl.wrap(_gpt2(), exclude=["*/self_attention", "token_embedding"])
    names = [w.target_name for w in tl.find_wrappers(model)]
    assert names and not any(n.endswith("self_attention") or n == "token_embedding" for n in names)
    with pytest.raises(ValueError, match="exclude names no prunable layer"):
        tl.wrap(_gpt2(), exclude=["*/nothing_like_this"])
    with pytest.raises(ValueError, match="exclude names no prunable layer"):
        tl.wrap(_gpt2(), exclude=["*/feedforward_layer_norm"])  # never pruned: a typo?


def test_exclude_of_a_composite_layer_excludes_what_it_holds():
    everything = [w.target_name for w in tl.find_wrappers(tl.wrap(_gpt2()))]
    names = [
        w.target_name for w in tl.find_wrappers(tl.wrap(_gpt2(), exclude="transformer_layer_0"))
    ]
    assert any(n.startswith("transformer_layer_0/") for n in everything)
    assert names == [n for n in everything if not n.startswith("transformer_layer_0/")]


def test_lora_layers_are_refused_with_what_to_do():
    model = _gpt2()
    model.backbone.enable_lora(2)
    with pytest.raises(ValueError, match="LoRA"):
        tl.wrap(model)
    assert not tl.find_wrappers(model)  # nothing was attached


def test_a_functional_subclass_with_out_of_order_attributes():
    class Net(keras.Model):
        def __init__(self, **kwargs):
            fc2 = L.Dense(3, name="fc2")
            fc1 = L.Dense(5, activation="relu", name="fc1")
            inputs = keras.Input((4,))
            super().__init__(inputs, fc2(fc1(inputs)), **kwargs)
            self.fc2, self.fc1 = fc2, fc1

    model = Net(name="net")
    x = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    expected = model.predict(x, verbose=0)
    wrapped = tl.wrap(model)
    assert wrapped is model and type(wrapped) is Net
    assert [w.target_name for w in tl.find_wrappers(model)] == ["fc1", "fc2"]
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-6)
    tl.prune(model, tl.PruneFraction(0.5))
    assert tl.sparsity(model).sparsity == pytest.approx(0.5, abs=0.1)


def test_the_task_pattern_of_a_model_around_an_inner_model():
    inputs = keras.Input((4,))
    inner = keras.Model(inputs, L.Dense(6, activation="relu", name="hidden")(inputs), name="inner")
    head = L.Dense(2, name="head")
    task = keras.Model(inner.input, head(inner(inner.input)))
    x = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    expected = task.predict(x, verbose=0)
    wrapped = tl.wrap(task)
    assert sorted(w.target_name for w in tl.find_wrappers(wrapped)) == ["head", "hidden"]
    np.testing.assert_allclose(wrapped.predict(x, verbose=0), expected, atol=1e-6)


def test_in_place_refusals_name_what_to_do():
    with pytest.raises(ValueError, match="Sequential"):
        tl.wrap(keras.Sequential([keras.Input((3,)), L.Dense(2)]), in_place=True)
    with pytest.raises(ValueError, match="in_place=True"):
        tl.wrap(_gpt2(), in_place=False)
    with pytest.raises(ValueError, match="in_place"):
        tl.wrap(_gpt2(), in_place="yes")
    plain = tl.wrap(keras.Sequential([keras.Input((3,)), L.Dense(2)]))
    with pytest.raises(ValueError, match="in_place=True"):
        tl.strip(plain, in_place=True)


@pytest.mark.slow  # two trainings through the runner
def test_the_lottery_runner_on_a_keras_hub_model(tmp_path):
    x, y = _data("bert", batch=8)
    history = tl.find_winning_ticket(
        _bert,
        (x, y),
        validation_data=(x, y),
        rounds=1,
        epochs_per_round=1,
        fit_kwargs={"batch_size": 4},
        compile_kwargs={
            "optimizer": "adam",
            "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            "metrics": ["accuracy"],
        },
        out_dir=tmp_path,
        verbose=0,
    )
    rounds = history.arm("ticket")
    assert [r.round for r in rounds] == [0, 1]
    ticket = tl.load_round(_bert, tmp_path, 1)
    assert type(ticket) is H.BertTextClassifier
    assert 1 - tl.sparsity(ticket).sparsity == pytest.approx(rounds[1].remaining, abs=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="export converts with TF")
def test_a_pruned_bert_classifier_exports_to_litert_in_float_and_int8(tmp_path):
    model = tl.wrap(_bert())
    tl.prune(model, tl.PruneFraction(0.5))
    x, _ = _data("bert", batch=64)
    x["padding_mask"] = x["padding_mask"].astype("int32")
    for quantize in (None, "int8"):
        path = tmp_path / f"bert_{quantize}.tflite"
        # export_tflite raises when LiteRT's outputs do not match Keras'.
        report = tl.export_tflite(model, path, quantize=quantize, representative_data=x)
        assert report.verification and path.exists()
    assert tl.find_wrappers(model)  # export strips a copy


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="export converts with TF")
def test_dict_inputs_in_any_key_order_export(tmp_path):
    b, a = keras.Input((3,), name="b"), keras.Input((2,), name="a")
    out = L.Dense(2, name="out")(L.Concatenate()([L.Dense(4, name="fb")(b), a]))
    model = tl.wrap(keras.Model({"b": b, "a": a}, out))
    tl.prune(model, tl.PruneFraction(0.5))
    rng = np.random.default_rng(0)
    x = {
        "b": rng.normal(size=(32, 3)).astype("float32"),
        "a": rng.normal(size=(32, 2)).astype("float32"),
    }
    report = tl.export_tflite(model, tmp_path / "m.tflite", representative_data=x)
    assert report.verification
    np.testing.assert_allclose(
        tl.run_tflite(tmp_path / "m.tflite", x), keras.ops.convert_to_numpy(model(x)), atol=1e-5
    )


def test_quantized_layers_are_refused_with_what_to_do():
    class Net(keras.Model):
        def __init__(self, **kwargs):
            inputs = keras.Input((8,))
            super().__init__(inputs, L.Dense(4, name="fc")(inputs), **kwargs)

    model = Net()
    model.quantize("int8")
    with pytest.raises(ValueError, match="quantized"):
        tl.wrap(model)


def test_sparsity_per_weight_names_each_weight_by_path():
    model = tl.wrap(_gpt2())
    rows = tl.sparsity(model, per_weight=True).layers
    assert "transformer_layer_1/self_attention/attention_output/kernel" in [r.layer for r in rows]
    assert sum(r.total for r in rows) == tl.sparsity(model).total


def test_callbacks_take_layer_paths():
    x, y = _data("bert", batch=8)
    model = tl.wrap(_bert())
    _compile(model)
    frozen = "transformer_layer_0/feedforward_output_dense"
    cb = tl.IterativePruning(
        tl.PruneFraction(0.5, per_layer={"transformer_layer_1/feedforward_output_dense": 0.25}),
        every=1,
        rewind=None,
        frozen=[frozen],
    )
    model.fit(x, y, epochs=1, batch_size=4, verbose=0, callbacks=[cb])
    report = tl.sparsity(model)
    assert report[frozen].sparsity == 0
    assert report["transformer_layer_1/feedforward_output_dense"].sparsity == pytest.approx(
        0.25, abs=0.01
    )
    assert report["transformer_layer_1/feedforward_intermediate_dense"].sparsity == pytest.approx(
        0.5, abs=0.01
    )


def test_sensitivity_names_layers_by_path():
    x, y = _data("bert", batch=8)
    model = tl.wrap(_bert())
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    before = [keras.ops.convert_to_numpy(v) for v in model.weights]
    report = tl.sensitivity(model, (x, y), sparsities=(0.5,), verbose=0)
    assert "transformer_layer_1/feedforward_output_dense" in str(report)
    for a, b in zip(before, model.weights):  # the model ends as it started
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(b))
