"""Reading .tflite flatbuffers: ops, constant weights and their values.

Reads any .tflite file, including ones made without tf_lottery, with the
schema that ships with LiteRT (or TensorFlow). Part of tf_lottery's LiteRT side:
imports neither Keras nor TensorFlow (see docs/imports.md).
"""

import re

import numpy as np

# TFLite's TensorType codes of the types a weight can have.
_NUMPY_TYPE = {
    0: np.float32,
    1: np.float16,
    2: np.int32,
    3: np.uint8,
    4: np.int64,
    6: np.bool_,
    7: np.int16,
    9: np.int8,
    10: np.float64,
    12: np.uint64,
    15: np.uint32,
    16: np.uint16,
}
TYPE_NAME = {code: np.dtype(numpy_type).name for code, numpy_type in _NUMPY_TYPE.items()}
_DENSE = 0  # DimensionType.DENSE; the other kind is SPARSE_CSR


def _schema():
    # LiteRT ships the same generated schema as TensorFlow: reading a .tflite file
    # needs either, and LiteRT is the lighter one.
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        try:
            from tensorflow.lite.python import schema_py_generated
        except ImportError as error:
            raise ImportError(
                "Reading .tflite files needs LiteRT: pip install ai-edge-litert "
                "(or pip install 'tf_lottery[litert]')."
            ) from error
    return schema_py_generated


def check_identifier(head, where):
    """Raises a `ValueError` naming `where` unless `head` (a file's first bytes) is a .tflite file's.

    LiteRT refuses a file without TFLite's identifier at bytes 4-8 too, but says
    only that it is not a valid flatbuffer.
    """
    if head[:4] == b"PK\x03\x04":
        raise ValueError(
            f"{where} is not a valid .tflite file: it is a zip archive (a .keras model, or a .npz?)."
        )
    if head[4:8] != b"TFL3":
        raise ValueError(
            f"{where} is not a valid .tflite file: it lacks TFLite's identifier 'TFL3' at "
            f"byte 4 (it has {head[4:8]!r})."
        )


def read(content):
    """The file's `ModelT` (flatbuffer object API); raises on malformed bytes."""
    schema = _schema()
    return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(content, 0))


def op_names(model):
    """The builtin op name of each of the model's operator codes."""
    schema = _schema()
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return [
        names.get(max(code.builtinCode, code.deprecatedBuiltinCode), str(code.builtinCode))
        for code in model.operatorCodes
    ]


# int32 and int64: the types of PAD's paddings and of shapes, never of a weight
# of 2 or more dimensions (int8 files keep only their biases in int32).
_NOT_WEIGHT_TYPES = (2, 4)


def constant_weights(model):
    """Yields `(index, tensor, data)` for each constant weight tensor of 2 or more dimensions.

    Integer constants (PAD's paddings, shapes) are not weights and are left out.
    """
    for index, tensor in enumerate(model.subgraphs[0].tensors):
        data = model.buffers[tensor.buffer].data
        if data is None or tensor.shape is None or len(tensor.shape) < 2:
            continue
        if tensor.type not in _NOT_WEIGHT_TYPES:
            yield index, tensor, data


def tensor_name(tensor):
    """The `name` of a tensor (or of a signature's tensor map) as a str."""
    return tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)


def stored_values(tensor, data):
    """The values stored in a tensor's buffer, as numpy (sparse ones: only those kept)."""
    return np.frombuffer(bytes(data), dtype=_NUMPY_TYPE.get(tensor.type, np.uint8))


def block_shape(tensor):
    """A block-sparse tensor's block shape, e.g. `(1, 4)`; `None` for any other tensor."""
    sparsity = tensor.sparsity
    if sparsity is None or sparsity.blockMap is None or not len(sparsity.blockMap):
        return None
    order, levels = list(sparsity.traversalOrder), sparsity.dimMetadata
    rank = len(tensor.shape)
    sizes = [1] * rank
    for i, dim in enumerate(sparsity.blockMap):
        sizes[int(dim)] = int(levels[order.index(rank + i)].denseSize)
    return tuple(sizes)


def _densify(values, shape, sparsity):
    # TFLite's sparse format: the dense shape, each dimension cut into blocks,
    # then the block dimensions; walked in traversal order, each level DENSE
    # (every index) or CSR (the indices kept under each parent position).
    order, levels = list(sparsity.traversalOrder), sparsity.dimMetadata
    rank = len(shape)
    positions = np.zeros(1, dtype=np.int64)
    coordinates = np.zeros((1, len(order)), dtype=np.int64)
    for dim, level in zip(order, levels):
        if level.format == _DENSE:
            size = int(level.denseSize)
            counts = np.full(len(positions), size)
            children = (positions[:, None] * size + np.arange(size)).ravel()
            index = np.tile(np.arange(size), len(positions))
        else:
            segments = np.asarray(level.arraySegments.values, dtype=np.int64)
            starts = segments[positions]
            counts = segments[positions + 1] - starts
            offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            children = np.repeat(starts, counts) + offsets
            index = np.asarray(level.arrayIndices.values, dtype=np.int64)[children]
        coordinates = np.repeat(coordinates, counts, axis=0)
        coordinates[:, dim] = index
        positions = children
    dense_coordinates = coordinates[:, :rank].copy()
    block_map = list(sparsity.blockMap) if sparsity.blockMap is not None else []
    for i, dim in enumerate(block_map):
        block = int(levels[order.index(rank + i)].denseSize)
        dense_coordinates[:, dim] = coordinates[:, dim] * block + coordinates[:, rank + i]
    dense = np.zeros(shape, dtype=values.dtype)
    dense[tuple(dense_coordinates.T)] = values[positions]
    return dense


def dense_values(tensor, data):
    """A constant tensor's values as float32 in its dense shape, and their precision.

    Sparse storage is expanded and quantized values are dequantized.

    Returns:
        `(values, precision)`: how far each value may be from the number it
        stores (half a quantization step, or the float type's rounding), an
        array that broadcasts against `values`.
    """
    shape = tuple(int(d) for d in tensor.shape)
    values = stored_values(tensor, data)
    if tensor.sparsity is not None:
        values = _densify(values, shape, tensor.sparsity)
    values = values.reshape(shape)
    quantization = tensor.quantization
    if quantization is not None and quantization.scale is not None and len(quantization.scale):
        axes = [1] * len(shape)
        if len(quantization.scale) > 1:
            axes[quantization.quantizedDimension] = -1
        scale = np.asarray(quantization.scale, dtype=np.float32).reshape(axes)
        zero_point = np.asarray(quantization.zeroPoint, dtype=np.float32).reshape(axes)
        return (values.astype(np.float32) - zero_point) * scale, 0.51 * scale
    values = values.astype(np.float32)
    relative = 1e-3 if tensor.type == 1 else 1e-6  # float16 or float32
    return values, relative * np.abs(values) + 1e-7


def natural_key(name):
    """Sorts `output_10` after `output_2`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def output_steps(model):
    """The quantization step of each output, in signature order (0 for float outputs).

    An int8 model with float outputs ends in DEQUANTIZE ops: the step is that
    of their int8 input.
    """
    subgraph = model.subgraphs[0]
    if model.signatureDefs:
        outputs = sorted(model.signatureDefs[0].outputs, key=lambda o: natural_key(tensor_name(o)))
        indices = [int(o.tensorIndex) for o in outputs]
    else:
        indices = [int(i) for i in subgraph.outputs]
    names = op_names(model)
    producers = {int(out): op for op in subgraph.operators for out in op.outputs}
    steps = []
    for index in indices:
        op = producers.get(index)
        if op is not None and names[op.opcodeIndex] == "DEQUANTIZE":
            index = int(op.inputs[0])
        quantization = subgraph.tensors[index].quantization
        scale = None if quantization is None else quantization.scale
        steps.append(float(np.max(scale)) if scale is not None and len(scale) else 0.0)
    return steps
