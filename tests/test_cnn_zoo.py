"""Keras Applications CNNs through wrap → UnitNorm → shrink → int8 export → LiteRT.

Random weights at small inputs, with random BatchNormalization statistics
(`cnn_zoo_model`), so that outputs are of order one and a wrong fold shows.
"""

import os
import sys
import warnings

import keras
import numpy as np
import pytest

import tf_lottery as tl

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples"))
from models import cnn_zoo_model  # noqa: E402

# The smallest input each takes; the heavy ones are marked slow.
ZOO = [
    ("MobileNetV2", 32, []),
    ("MobileNetV3Small", 32, []),
    ("EfficientNetB0", 32, [pytest.mark.slow]),
    ("ResNet50", 32, [pytest.mark.slow]),
    ("DenseNet121", 32, [pytest.mark.slow]),
    ("ConvNeXtTiny", 32, [pytest.mark.slow]),
]


def _images(model, n, seed=0):
    shape = (n, *model.input_shape[1:])
    return np.random.default_rng(seed).uniform(0, 255, shape).astype("float32")


@pytest.mark.tensorflow
@pytest.mark.parametrize("name, size", [pytest.param(n, s, marks=m, id=n) for n, s, m in ZOO])
def test_zoo_model_shrinks_and_exports_to_int8_that_litert_runs(name, size, tmp_path):
    model = tl.wrap(cnn_zoo_model(name, input_size=size))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no group left alone for an unknown layer
        tl.prune(model, tl.UnitNorm(0.5, round_to=8))
        small = tl.shrink(model)  # checks its predictions against the model's itself
    report = tl.shrink_report(model, small)
    assert report.macs_after < report.macs_before / 1.5, str(report)
    if name == "ConvNeXtTiny":  # the residual stream is LayerNormalized: the hidden units go
        assert small.get_layer("convnext_tiny_stage_0_block_0_pointwise_conv_1").units == 192
    x = _images(model, 64)
    exported = tl.export_tflite(
        model, str(tmp_path / "m.tflite"), quantize="int8", representative_data=x, verify=False
    )
    assert exported.shrink is not None and exported.shrink.macs_after == report.macs_after
    keras_out = keras.ops.convert_to_numpy(small(x, training=False))
    litert_out = tl.run_tflite(exported.path, x)
    assert litert_out.shape == keras_out.shape and np.all(np.isfinite(litert_out))
    # int8 of a random-weight network: the outputs correlate, they do not match.
    assert np.corrcoef(litert_out.ravel(), keras_out.ravel())[0, 1] > 0.9
