"""Reading and writing many variables in one call (tf_lottery/batched.py)."""

import gc
import weakref

import keras
import numpy as np
from conftest import compile_model
from conftest import data
from conftest import mlp

import tf_lottery as tl
from tf_lottery import batched


class _Owner:
    pass


def _doubled(values, inputs):
    return [keras.ops.multiply(v, 2.0) for v in values] + [keras.ops.copy(inputs[0])]


def test_a_group_gives_the_same_values_eager_and_compiled():
    owner = _Owner()
    a = keras.Variable(np.arange(4, dtype="float32"))
    b = keras.Variable(np.zeros((2, 2), "float32"))
    out = keras.Variable(np.zeros((3,), "float32"))
    # The first call runs eagerly; the second and third through the compiled group.
    for step in range(1, 4):
        given = np.full((3,), step, "float32")
        batched.run(owner, "double", [a, b], [a, b, out], _doubled, (given,))
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), np.arange(4) * 2**step)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(out), given)
        values = batched.read(owner, "read", [a, out])
        np.testing.assert_array_equal(values[0], np.arange(4) * 2**step)
        np.testing.assert_array_equal(values[1], given)


def test_other_variables_get_a_group_of_their_own():
    owner = _Owner()
    first = [keras.Variable(np.ones((2,), "float32"))]
    second = [keras.Variable(np.ones((3,), "float32"))]
    ones = (np.ones((2,), "float32"),)
    for _ in range(2):
        batched.run(
            owner, "double", first, first, lambda v, i: [keras.ops.multiply(v[0], 2.0)], ones
        )
    batched.run(owner, "double", second, second, lambda v, i: [keras.ops.multiply(v[0], 3.0)], ())
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(first[0]), [4, 4])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(second[0]), [3, 3, 3])
    assert [batched.read(owner, "read", v)[0].tolist() for v in (first, second)] == [
        [4, 4],
        [3, 3, 3],
    ]


def test_compiled_rounds_keep_masks_and_rewinds_exact_and_training_works():
    # Three rounds: the second and third go through the compiled groups.
    model = compile_model(tl.wrap(mlp()))
    x, y = data()
    for _ in range(3):
        model.fit(x, y, epochs=1, verbose=0)
        tl.prune(model, tl.PruneFraction(0.3))
        tl.rewind(model)
        tl.reset_optimizer(model.optimizer)
        for wrapper in tl.find_wrappers(model):
            for saved in wrapper.saved_weights:
                value = keras.ops.convert_to_numpy(saved.variable)
                initial = keras.ops.convert_to_numpy(saved.initial)
                if saved.mask is not None:
                    initial = initial * keras.ops.convert_to_numpy(saved.mask)
                np.testing.assert_array_equal(value, initial)
    model.fit(x, y, epochs=1, verbose=0)  # on JAX: no two variables share a buffer
    for wrapper in tl.find_wrappers(model):
        for masked in wrapper.masked_weights:
            mask = keras.ops.convert_to_numpy(masked.mask)
            assert not np.any(keras.ops.convert_to_numpy(masked.variable)[mask == 0])
    assert {
        w.target_name: int(keras.ops.convert_to_numpy(w.pruning_round))
        for w in tl.find_wrappers(model)
    } == {w.target_name: 3 for w in tl.find_wrappers(model)}


def test_the_groups_do_not_keep_a_model_alive():
    model = compile_model(tl.wrap(mlp()))
    x, y = data()
    model.fit(x, y, epochs=1, verbose=0)
    for _ in range(2):
        tl.prune(model, tl.PruneFraction(0.3))
        tl.rewind(model)
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None
