"""The networks of the papers, shared by the examples and benchmarks."""

# First: tf_lottery loads Keras with TensorFlow's start-up logs kept out of the output.
import tf_lottery  # noqa: F401
import keras
import numpy as np

from tf_lottery.export.capture import captured_output
from tf_lottery.keras_private import flatten_layers

# The backend's devices start with the first tensor, and log too (cuInit where the
# TensorFlow wheel has GPU support and the machine has no GPU): start them here, quietly.
with captured_output():
    keras.ops.convert_to_tensor(0.0)


def lenet_300_100():
    """LeNet-300-100 (784-300-100-10, ReLU), as in Frankle & Carbin and Han et al."""
    return keras.Sequential(
        [
            keras.Input((28, 28)),
            keras.layers.Flatten(),
            keras.layers.Dense(300, activation="relu", name="fc1"),
            keras.layers.Dense(100, activation="relu", name="fc2"),
            keras.layers.Dense(10, name="out"),
        ],
        name="lenet_300_100",
    )


def lenet5():
    """LeNet-5 as Han et al. prune it (Caffe's version: conv 20 and 50 5x5, fc 500)."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(20, 5, activation="relu", name="conv1"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(50, 5, activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(500, activation="relu", name="fc1"),
            keras.layers.Dense(10, name="out"),
        ],
        name="lenet5",
    )


def small_cnn():
    """conv-BN-ReLU-pool x2, fc 128, out 10: 421k weights, 4.2M multiply-adds.

    BatchNormalization's moving statistics follow the batches with momentum 0.9,
    not Keras' 0.99: a round is a few hundred steps on the offline digits, too few
    for 0.99 to forget its initial values.
    """
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(32, 3, padding="same", name="conv1"),
            keras.layers.BatchNormalization(momentum=0.9, name="bn1"),
            keras.layers.ReLU(),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, padding="same", name="conv2"),
            keras.layers.BatchNormalization(momentum=0.9, name="bn2"),
            keras.layers.ReLU(),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu", name="fc"),
            keras.layers.Dense(10, name="out"),
        ],
        name="small_cnn",
    )


def classifier_compile_kwargs(learning_rate):
    """Adam, cross-entropy on logits, accuracy: the settings of every example."""
    return dict(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


# Keras Applications at small input sizes, for structured pruning and shrink
# (tests/test_cnn_zoo.py, benchmarks/cnn_zoo.py): constructor name and arguments.
CNN_ZOO = {
    "MobileNetV2": ("MobileNetV2", {"input_shape": (96, 96, 3), "alpha": 0.35}),
    "MobileNetV3Small": ("MobileNetV3Small", {"input_shape": (96, 96, 3), "alpha": 0.75}),
    "EfficientNetB0": ("EfficientNetB0", {"input_shape": (96, 96, 3)}),
    "ResNet50": ("ResNet50", {"input_shape": (64, 64, 3)}),
    "DenseNet121": ("DenseNet121", {"input_shape": (64, 64, 3)}),
    "ConvNeXtTiny": ("ConvNeXtTiny", {"input_shape": (64, 64, 3)}),
}


def cnn_zoo_model(name, input_size=None, classes=10, seed=0):
    """A Keras Applications model with random weights and BatchNormalization statistics.

    With `weights=None` every BatchNormalization has moving mean 0 and variance 1
    while activations grow layer by layer, so a model's outputs are near 1e-11
    and any comparison of predictions passes. Here each BatchNormalization gets
    random, non-trivial γ, β, mean and variance, and the outputs are of order one.

    Args:
        name: A key of `CNN_ZOO`.
        input_size: Height and width, or `None` for the zoo's. Defaults to `None`.
        classes: Output classes. Defaults to `10`.
        seed: Seed of the weights and statistics. Defaults to `0`.
    """
    constructor, kwargs = CNN_ZOO[name]
    kwargs = dict(kwargs)
    if input_size is not None:
        kwargs["input_shape"] = (input_size, input_size, 3)
    keras.utils.set_random_seed(seed)
    with captured_output():
        model = getattr(keras.applications, constructor)(
            weights=None, classes=classes, classifier_activation=None, **kwargs
        )
    rng = np.random.default_rng(seed)
    for layer in flatten_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            size = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.5, size))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, size))
            if layer.gamma is not None:
                layer.gamma.assign(rng.uniform(0.5, 1.5, size))
            if layer.beta is not None:
                layer.beta.assign(rng.normal(0, 0.5, size))
    return model
