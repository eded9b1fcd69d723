"""Recovery by distillation: the loss, the model that trains with it, and its checks."""

import numpy as np
import pytest

import tf_lottery as tl
import keras
from keras import layers as L


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)


def test_the_loss_is_t_squared_times_the_kl_divergence_of_the_soft_targets():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(2, 5, 7)).astype("float32")
    t = 3.0
    p, q = _softmax(teacher / t), _softmax(student / t)
    expected = t**2 * np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=-1))
    got = float(keras.ops.convert_to_numpy(tl.distillation_loss(student, teacher, t)))
    assert got == pytest.approx(expected, rel=1e-5)
    same = tl.distillation_loss(teacher, teacher, t)
    assert float(keras.ops.convert_to_numpy(same)) == pytest.approx(0.0, abs=1e-6)


def test_padded_positions_do_not_count():
    rng = np.random.default_rng(1)
    student, teacher = rng.normal(size=(2, 3, 6, 5)).astype("float32")
    padding = np.ones((3, 6), "float32")
    padding[:, 4:] = 0
    noisy = student.copy()
    noisy[:, 4:] = 1e3 * rng.normal(size=noisy[:, 4:].shape)  # garbage where padded
    clean = tl.distillation_loss(student[:, :4], teacher[:, :4], 2.0)
    masked = tl.distillation_loss(noisy, teacher, 2.0, sample_weight=padding)
    assert float(keras.ops.convert_to_numpy(masked)) == pytest.approx(
        float(keras.ops.convert_to_numpy(clean)), rel=1e-5
    )


def _mlp(units, seed, name):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8,))
    return keras.Model(inputs, L.Dense(4)(L.Dense(units, activation="tanh")(inputs)), name=name)


def _kl(student, teacher, x):
    return float(keras.ops.convert_to_numpy(tl.distillation_loss(student(x), teacher(x), 1.0)))


def test_a_student_learns_the_teachers_outputs_without_labels():
    x = np.random.default_rng(2).normal(size=(256, 8)).astype("float32")
    teacher, student = _mlp(32, 0, "teacher"), _mlp(16, 1, "student")
    before = _kl(student, teacher, x)
    distilling = tl.Distillation(student, teacher, temperature=1.0, alpha=1.0)
    distilling.compile(keras.optimizers.Adam(1e-2))
    distilling.fit(x, epochs=30, batch_size=32, verbose=0)
    assert _kl(student, teacher, x) < 0.2 * before


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_the_teacher_is_not_trained_and_is_left_as_it_was(alpha):
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(64, 8)).astype("float32"), rng.integers(0, 4, 64)
    teacher, student = _mlp(32, 0, "teacher"), _mlp(16, 1, "student")
    before = [keras.ops.convert_to_numpy(w).copy() for w in teacher.weights]
    distilling = tl.Distillation(student, teacher, alpha=alpha)
    distilling.compile(
        keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    assert distilling.trainable_weights == student.trainable_weights
    assert len(distilling.non_trainable_weights) == len(teacher.weights)
    distilling.fit(x, y, epochs=2, batch_size=16, verbose=0)
    for weight, value in zip(teacher.weights, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(weight), value)
    assert teacher.trainable
    assert len(teacher.trainable_weights) == 4
    assert len(tl.find_wrappers(tl.wrap(keras.models.clone_model(teacher)))) == 2


def test_pruning_callbacks_reach_the_student_through_it():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(64, 8)).astype("float32"), rng.integers(0, 4, 64)
    teacher = _mlp(32, 0, "teacher")
    student = tl.wrap(_mlp(16, 1, "student"))
    distilling = tl.Distillation(student, teacher, alpha=0.5)
    distilling.compile(
        keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    pruning = tl.IterativePruning(tl.PruneFraction(0.5), every=1, rewind=None)
    distilling.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[pruning])
    assert tl.sparsity(student).sparsity > 0.5
    for wrapper in tl.find_wrappers(student):
        for masked in wrapper.masked_weights:
            weight = keras.ops.convert_to_numpy(masked.variable.value)
            assert np.all(weight[keras.ops.convert_to_numpy(masked.mask.value) == 0] == 0)


def test_bad_arguments_name_the_argument():
    teacher, student = _mlp(8, 0, "teacher"), _mlp(4, 1, "student")
    cases = [
        (lambda: tl.Distillation(student, student), "two models"),
        (lambda: tl.Distillation(student, tl.wrap(teacher)), "Pass the dense model"),
        (lambda: tl.Distillation(student, teacher, temperature=0), "temperature"),
        (lambda: tl.Distillation(student, teacher, alpha=1.5), "alpha"),
        (lambda: tl.Distillation("student", teacher), "student"),
    ]
    for make, match in cases:
        with pytest.raises(ValueError, match=match):
            make()
    assert teacher.trainable  # nothing was changed by the refusals


def test_get_config_round_trip():
    distilling = tl.Distillation(_mlp(4, 1, "student"), _mlp(8, 0, "teacher"), 2.0, 0.7)
    again = tl.Distillation.from_config(distilling.get_config())
    assert (again.temperature, again.alpha) == (2.0, 0.7)
    assert again.student.name == "student" and again.teacher.name == "teacher"
