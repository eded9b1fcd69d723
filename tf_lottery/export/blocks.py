"""What LiteRT's sparse kernels need from a pruned weight: the export side's facts.

Criteria ask this module which blocks a `block="tflite-float"` or `"tflite-int8"`
mode means and which input rows such a mode must prune; the facts themselves are
LiteRT's, re-checked by `tests/test_tflite.py` and `benchmarks/tflite_bench.py`.
"""

import numpy as np

# Block shapes in the Keras kernel's [in, out] layout that TFLite's sparse
# FULLY_CONNECTED kernels can use: 1x4 (float) or 1x16 (int8) blocks along the
# input dimension of TFLite's [out, in] weights. Only Dense layers have them.
TFLITE_BLOCKS = {"tflite-float": (4, 1), "tflite-int8": (16, 1)}


def block_for(mode, layer_type):
    """The block shape that `mode` ("tflite-float"/"tflite-int8") uses on a layer type."""
    return TFLITE_BLOCKS[mode] if layer_type == "Dense" else (1, 1)


def without_partial_block(alive, rows, block):
    """`alive` (per block) with the last, partial row block pruned, if there is one.

    LiteRT's sparse int8 kernel computes wrong results when a partial block is
    stored (measured with ai-edge-litert 2.3: LeNet-300-100 at 72.6% instead of
    92.4%), so the TFLite modes prune the input rows that do not fill a whole block.
    """
    if block == (1, 1) or not rows % block[0] or rows <= block[0]:
        return alive
    alive = np.array(alive, copy=True)
    alive[-1, :] = False
    return alive
