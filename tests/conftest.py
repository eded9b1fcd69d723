import gc
import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


BACKEND = keras.backend.backend()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "tensorflow: needs the TensorFlow backend (export, tf.distribute, tfmot)"
    )
    config.addinivalue_line(
        "markers",
        "once: heavy and backend-neutral (host-side numpy): runs under one backend, TensorFlow",
    )


def pytest_report_header(config):
    return f"Keras {keras.__version__}, backend {BACKEND} (set KERAS_BACKEND to change it)"


def pytest_collection_modifyitems(config, items):
    if BACKEND == "tensorflow":
        return
    skip = pytest.mark.skip(reason=f"needs the TensorFlow backend; this run uses {BACKEND}")
    once = pytest.mark.skip(reason="backend-neutral and heavy: runs under TensorFlow only")
    for item in items:
        if "tensorflow" in item.keywords:
            item.add_marker(skip)
        elif "once" in item.keywords:
            item.add_marker(once)


@pytest.fixture(autouse=True, scope="module")
def _freeze_what_earlier_modules_left():
    """Moves the objects alive at a module's start out of the garbage collector's sight.

    TensorFlow's TFLite converter calls `gc.collect()` in every conversion, and a
    full collection walks every live object: the models earlier tests left alive
    made test_tflite 2-4.5x slower in a full run than alone (0.75 s per
    collection). Frozen objects are never collected; what a module leaves as
    garbage is collected first, at the next module's start.
    """
    gc.collect()
    gc.freeze()
    yield


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def open_name_scopes():
    """The names of the Keras name scopes open now, outermost first."""
    from keras.src.backend.common import global_state

    stack = global_state.get_global_attribute("name_scope_stack") or []
    return [getattr(entry, "name", entry) for entry in stack]


@pytest.fixture(autouse=True)
def _no_name_scope_left_open(request):
    """Closes Keras name scopes a test leaves open, and says which test it was.

    A layer's path is the name scope it is built in, so one left open renames
    every later layer. Keras 3.15 leaves one open under TensorFlow when a
    subclassed layer without `build` is built by tracing its `call` and a layer
    it calls has a name TensorFlow refuses as a graph scope (one starting with
    `_`, as a class `_Block` gets): its scope is pushed, `tf.name_scope` raises,
    the scope is never popped, and the eager call goes on.
    """
    yield
    names = open_name_scopes()
    if names:
        from keras.src.backend.common import global_state

        global_state.set_global_attribute("name_scope_stack", [])
        warnings.warn(f"{request.node.nodeid} left Keras name scopes open: {names}", stacklevel=2)


def mlp(inputs=20, hidden=16, outputs=3):
    """A tiny LeNet-300-100-like MLP with layers named fc1 and out."""
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(hidden, activation="relu", name="fc1"),
            keras.layers.Dense(outputs, name="out"),
        ]
    )


def data(n=128, inputs=20, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, inputs)).astype("float32")
    y = (x[:, :classes].argmax(axis=1)).astype("int32")
    return x, y


def compile_model(model, learning_rate=1e-2):
    model.compile(
        keras.optimizers.Adam(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def check_computing_masks_changes_nothing(model, make):
    """Computing masks with `make()` changes no variable; `prune` then writes those masks."""
    import tf_lottery as tl
    from tf_lottery.pruning import prune_targets

    def numpy(variable):
        return np.asarray(keras.ops.convert_to_numpy(variable.value))

    before = [numpy(v).copy() for v in model.variables]
    targets = prune_targets(tl.find_wrappers(model))
    computed = [mask for mask, _ in make().compute_masks(targets, model=model)]
    for variable, value in zip(model.variables, before):
        np.testing.assert_array_equal(numpy(variable), value, err_msg=variable.path)
    assert any(not mask.all() for mask in computed)
    tl.prune(model, make())
    for target, mask in zip(targets, computed):
        np.testing.assert_array_equal(numpy(target.mask), mask)
