"""The networks of the papers, shared by the examples and benchmarks."""

# First: tf_lottery loads Keras with TensorFlow's start-up logs kept out of the output.
import tf_lottery  # noqa: F401
import keras

from tf_lottery.capture import captured_output

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


def classifier_compile_kwargs(learning_rate):
    """Adam, cross-entropy on logits, accuracy: the settings of every example."""
    return dict(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
