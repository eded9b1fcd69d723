"""Recovery by distillation: fine-tune a pruned model against the dense one."""

import keras
from keras import ops

from tf_lottery.gradients import no_gradients
from tf_lottery.validators import check_number
from tf_lottery.validators import check_weight
from tf_lottery.wrapper import find_rewind_wrappers


def distillation_loss(student_logits, teacher_logits, temperature, sample_weight=None):
    """Hinton et al.'s soft-target loss, T² · KL(softmax(t/T) ‖ softmax(s/T)).

    Averaged over every position (the batch, and a sequence's tokens for a
    language model), weighted by `sample_weight` where it is given: a padding
    mask of shape (batch, length) keeps padded tokens out.
    """
    teacher = ops.cast(teacher_logits, "float32") / temperature
    student = ops.cast(student_logits, "float32") / temperature
    log_teacher = ops.log_softmax(teacher, axis=-1)
    kl = ops.sum(ops.exp(log_teacher) * (log_teacher - ops.log_softmax(student, axis=-1)), axis=-1)
    kl = kl * temperature**2
    if sample_weight is None:
        return ops.mean(kl)
    weight = ops.cast(sample_weight, kl.dtype)
    weight = ops.broadcast_to(
        ops.reshape(weight, weight.shape + (1,) * (kl.ndim - weight.ndim)), kl.shape
    )
    return ops.sum(kl * weight) / ops.maximum(ops.sum(weight), 1e-9)


def _without(variables, excluded):
    excluded = {id(v) for v in excluded}
    return [v for v in variables if id(v) not in excluded]


@keras.saving.register_keras_serializable(package="tf_lottery")
class Distillation(keras.Model):
    """Trains `student` on its task loss and on `teacher`'s soft targets.

    The model to fine-tune after pruning, with the dense model as the teacher
    (Hinton et al. 2015; Minitron's recovery after width pruning). It is a Keras
    model: compile it with the student's optimizer, loss and metrics, and `fit`
    it with the usual data and callbacks (`IterativePruning` and
    `GradualPruning` reach the student's wrappers through it). Its predictions
    are the student's. The loss is

        alpha · T² · KL(softmax(teacher / T) ‖ softmax(student / T)) + (1 − alpha) · task loss

    per output, averaged with the data's sample weights (a padding mask keeps
    padded tokens out), where `keras.distillation.Distiller` ignores them. The
    teacher runs in inference mode and is not trained: its weights count among
    this model's non-trainable ones, while the teacher itself is left as it was
    (`keras.distillation.Distiller` sets `teacher.trainable = False` for good, so
    a clone of it made afterwards is frozen too, and `wrap` skips its layers).
    Student and teacher need not take the same input shapes or dtypes (a shrunk
    model does), only the same inputs and output shapes.

    Args:
        student: The pruned (or shrunk) model to train, a built Keras model.
        teacher: The model to learn from, usually the dense original, not
            wrapped.
        temperature: T, softening both distributions; positive. Defaults to `4.0`.
        alpha: The weight of the distillation term, in [0, 1]; 1 trains on the
            teacher's outputs alone and needs no labels. Defaults to `0.9`.

    Example:

    ```python
    small = tf_lottery.shrink(pruned)
    distilling = tf_lottery.Distillation(small, dense_model, temperature=4.0, alpha=0.9)
    distilling.compile(keras.optimizers.Adam(1e-3),
                       keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       metrics=["accuracy"])
    distilling.fit(x_train, y_train, epochs=3)
    small.evaluate(x_test, y_test)   # the student, trained
    ```
    """

    def __init__(self, student, teacher, temperature=4.0, alpha=0.9, **kwargs):
        super().__init__(**kwargs)
        for argument, model in (("student", student), ("teacher", teacher)):
            if not isinstance(model, keras.Model):
                raise ValueError(
                    f"Expected {argument} to be a Keras model. Received: {argument}={model!r} of "
                    f"type {type(model).__name__}"
                )
        if student is teacher:
            raise ValueError(
                "Expected the student and the teacher to be two models. Received: the same "
                "model for both; keep the dense model (or a copy of it) as the teacher."
            )
        if find_rewind_wrappers(teacher):
            raise ValueError(
                f"The teacher '{teacher.name}' has tf_lottery wrappers. Pass the dense model "
                "it was wrapped from (or tf_lottery.strip(teacher)), so that pruning callbacks "
                "during the fit find only the student's masks."
            )
        self.temperature = check_number(temperature, "temperature", positive=True)
        self.alpha = check_weight(alpha, "alpha", meaning="the weight of the distillation term")
        self.student = student
        self.teacher = teacher

    # The teacher's weights are kept out of the trainable ones here, where the
    # optimizer, the gradients and JAX's stateless step read them, rather than
    # by freezing the user's teacher.
    @property
    def trainable_weights(self):
        return _without(super().trainable_weights, self.teacher.variables)

    @property
    def trainable_variables(self):
        return _without(super().trainable_variables, self.teacher.variables)

    @property
    def non_trainable_weights(self):
        return _without(self.weights, self.trainable_weights)

    @property
    def non_trainable_variables(self):
        return _without(self.variables, self.trainable_variables)

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y_pred is None:
            y_pred = self(x, training=training)
        total = 0.0
        if self.alpha < 1.0:
            total = (1.0 - self.alpha) * super().compute_loss(
                x, y, y_pred, sample_weight, training=training
            )
        with no_gradients():
            targets = self.teacher(x, training=False)
        targets = keras.tree.map_structure(ops.stop_gradient, targets)
        terms = [
            distillation_loss(s, t, self.temperature, sample_weight)
            for s, t in zip(keras.tree.flatten(y_pred), keras.tree.flatten(targets))
        ]
        return total + self.alpha * sum(terms)

    def get_config(self):
        return {
            **super().get_config(),
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "temperature": self.temperature,
            "alpha": self.alpha,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("student", "teacher"):
            config[key] = keras.saving.deserialize_keras_object(config[key], custom_objects)
        return cls(**config)
