"""Frozen layers: held exactly during their fit, and free again after it, even after a crash."""

import keras
import numpy as np
import pytest
from conftest import compile_model
from conftest import data
from conftest import mlp

import tf_lottery as tl


class _RaiseAtBatch(keras.callbacks.Callback):
    def __init__(self, batch):
        super().__init__()
        self.batch = batch

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.batch:
            raise RuntimeError("boom")


def _fc1(model):
    return tl.find_wrappers(model)[0].layer


@pytest.mark.parametrize(
    "pruning",
    [
        lambda: tl.IterativePruning(tl.PruneFraction(0.3), frozen=["fc1"], verbose=0),
        lambda: tl.GradualPruning(tl.ConstantSparsity(0.5, frequency=1), frozen=["fc1"]),
    ],
)
@pytest.mark.parametrize("later", ["plain fit", "pruning fit"])
def test_a_fit_that_raises_mid_epoch_leaves_no_frozen_layer_behind(pruning, later):
    model = compile_model(tl.wrap(mlp()))
    x, y = data()
    fc1 = _fc1(model)
    constraints = [v.constraint for v in fc1.weights]
    before = [v.numpy().copy() for v in fc1.weights]
    with pytest.raises(RuntimeError, match="boom"):
        model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[pruning(), _RaiseAtBatch(3)])
    # Frozen until the crash (the other layer did train and prune).
    for variable, value in zip(fc1.weights, before):
        np.testing.assert_array_equal(variable.numpy(), value)
    assert tl.sparsity(model)["fc1"].sparsity == 0
    # A later fit without `frozen` trains the layer, with its own constraints.
    callbacks = [] if later == "plain fit" else [tl.IterativePruning(tl.PruneFraction(0.3))]
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=callbacks)
    assert [v.constraint for v in fc1.weights] == constraints
    assert not np.array_equal(fc1.kernel.numpy(), before[0])
    pruned = tl.find_wrappers(model)[1].masks["kernel"].numpy() == 0
    assert np.all(tl.find_wrappers(model)[1].layer.kernel.numpy()[pruned] == 0)


def test_freezing_again_after_a_crash_holds_the_values_of_the_new_fit():
    model = compile_model(tl.wrap(mlp()))
    x, y = data()
    frozen = lambda: tl.IterativePruning(tl.PruneFraction(0.3), frozen=["out"], verbose=0)  # noqa: E731
    with pytest.raises(RuntimeError):
        model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[frozen(), _RaiseAtBatch(1)])
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)  # "out" trains and moves
    out = tl.find_wrappers(model)[1].layer
    before = out.kernel.numpy().copy()
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[frozen()])
    np.testing.assert_array_equal(out.kernel.numpy(), before)
    assert isinstance(out.kernel.constraint, tl.masking.MaskConstraint)


def test_frozen_patterns_are_checked():
    with pytest.raises(ValueError, match="frozen"):
        tl.GradualPruning(tl.ConstantSparsity(0.5), frozen=[""])
    model = compile_model(tl.wrap(mlp()))
    x, y = data()
    with pytest.raises(ValueError, match="'conv\\*' matches no layer"):
        model.fit(
            x,
            y,
            epochs=1,
            verbose=0,
            callbacks=[tl.GradualPruning(tl.ConstantSparsity(0.5), frozen=["conv*"])],
        )
