"""Every kind of Keras model through the whole path: wrap, fit, save, load, strip, export, LiteRT."""

import os

import keras
import numpy as np
import pytest

import tf_lottery as tl

L = keras.layers
pytestmark = pytest.mark.tensorflow  # the path ends in a TFLite export


@keras.saving.register_keras_serializable(package="tests")
class KindsSubclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fc = tl.PruneWrapper(L.Dense(16, activation="relu"))
        self.bn = tl.RewindWrapper(L.BatchNormalization())
        self.out = tl.PruneWrapper(L.Dense(3))

    def call(self, x, training=False):
        return self.out(self.bn(self.fc(x), training=training))


def _subclassed():
    x = np.random.default_rng(0).normal(size=(64, 12)).astype("float32")
    return KindsSubclassed(), x, x[:, :3].argmax(axis=1), {}


def _two_inputs_two_outputs():
    a, b = keras.Input((8,), name="a"), keras.Input((4,), name="b")
    h = L.Dense(16, activation="relu", name="fc")(L.Concatenate()([a, b]))
    model = keras.Model(
        {"a": a, "b": b}, {"cls": L.Dense(3, name="cls")(h), "reg": L.Dense(1, name="reg")(h)}
    )
    rng = np.random.default_rng(0)
    x = {
        "a": rng.normal(size=(64, 8)).astype("float32"),
        "b": rng.normal(size=(64, 4)).astype("float32"),
    }
    y = {"cls": x["a"][:, :3].argmax(axis=1), "reg": x["b"][:, :1]}
    return tl.wrap(model), x, y, {}


def _lstm():
    model = keras.Sequential([keras.Input((6, 4)), L.LSTM(8, name="lstm"), L.Dense(3, name="out")])
    x = np.random.default_rng(0).normal(size=(64, 6, 4)).astype("float32")
    return tl.wrap(model), x, x[:, -1, :3].argmax(axis=1), {"batch_size": 1}


def _mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                L.Conv2D(4, 3, name="conv"),
                L.Flatten(),
                L.Dense(3, dtype="float32", name="out"),
            ]
        )
        wrapped = tl.wrap(model)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x = np.random.default_rng(0).normal(size=(64, 8, 8, 1)).astype("float32")
    return wrapped, x, (x.mean(axis=(1, 2, 3)) > 0).astype("int32"), {}


def _frozen_base():
    inputs = keras.Input((12,))
    base = keras.Sequential([L.Dense(16, activation="relu", name="base_fc")], name="base")
    base.trainable = False
    model = keras.Model(inputs, L.Dense(3, name="head")(base(inputs)))
    with pytest.warns(UserWarning, match="frozen"):
        wrapped = tl.wrap(model)
    x = np.random.default_rng(0).normal(size=(64, 12)).astype("float32")
    return wrapped, x, x[:, :3].argmax(axis=1), {}


KINDS = {
    "subclassed": _subclassed,
    "two_inputs_two_outputs": _two_inputs_two_outputs,
    "lstm": _lstm,
    "mixed_precision": _mixed_precision,
    "frozen_base": _frozen_base,
}


def _flat(outputs):
    if isinstance(outputs, dict):
        return [np.asarray(outputs[k]) for k in sorted(outputs)]
    return [np.asarray(o) for o in keras.tree.flatten(outputs)]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_wrap_fit_save_load_strip_export_and_run(kind, tmp_path):
    model, x, y, export_options = KINDS[kind]()
    losses = (
        {"cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True), "reg": "mse"}
        if isinstance(y, dict)
        else keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.compile("adam", losses)
    pruning = tl.IterativePruning(tl.PruneFraction(0.5), verbose=0)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[pruning])
    assert pruning.rounds_done == 2
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = tl.load_model(path)
    assert tl.sparsity(loaded).sparsity == pytest.approx(tl.sparsity(model).sparsity)
    expected = _flat(model.predict(x, verbose=0))
    plain = tl.strip(loaded)
    assert not tl.find_rewind_wrappers(plain)
    for a, b in zip(_flat(plain.predict(x, verbose=0)), expected):
        np.testing.assert_allclose(a, b, atol=1e-3)
    tflite = os.path.join(tmp_path, "model.tflite")
    report = tl.export_tflite(loaded, tflite, representative_data=x, **export_options)
    assert report.verification, report
    tolerance = 2e-2 if kind == "mixed_precision" else 1e-4
    for a, b in zip(_flat(tl.run_tflite(tflite, x)), expected):
        np.testing.assert_allclose(a, b, atol=tolerance)
