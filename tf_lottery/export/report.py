"""What a .tflite file holds: `inspect_tflite` and the reports it and `export_tflite` print.

Part of tf_lottery's LiteRT side: imports neither Keras nor TensorFlow, so
`tf-lottery inspect` answers at once and works with `tf_lottery[litert]` alone
(see docs/imports.md).
"""

import dataclasses
import os

import numpy as np

from tf_lottery.export import flatbuffer


@dataclasses.dataclass(frozen=True)
class TensorEncoding:
    """How one constant weight tensor is stored in a .tflite file.

    Attributes:
        name: Tensor name in the file (the converter's, often that of a
            neighbouring op).
        op: The op that reads it (after any DENSIFY), e.g. `"FULLY_CONNECTED"`.
        shape: Dense shape in TFLite's layout ([out, in] for FULLY_CONNECTED).
        dtype: Element type, e.g. `"float32"` or `"int8"`.
        encoding: `"dense"`, `"random-sparse"` (CSR of single weights) or
            `"block-sparse"`.
        block: Block shape in TFLite's layout, e.g. `(1, 4)`; `None` unless
            block-sparse.
        sparsity: Fraction of zeros (for sparse tensors: of values not stored).
        densified: Whether a DENSIFY op turns it back into a dense tensor at load
            time (a smaller file, no speed-up).
        nbytes: Bytes of its buffer in the file.
        weight: The Keras weight it holds, as `"layer/weight"` (e.g.
            `"conv1/kernel"`), for files made by `export_tflite`; else `None`.
        folded: The BatchNormalization layer that the converter folded into
            the weight, whose values then differ from the Keras weight's by a
            factor per output channel; else `None`.
    """

    name: str
    op: str
    shape: tuple
    dtype: str
    encoding: str
    block: tuple | None
    sparsity: float
    densified: bool
    nbytes: int
    weight: str | None = None
    folded: str | None = None

    @property
    def label(self):
        """The Keras weight's name where known, else the tensor's (shortened)."""
        if self.weight and self.folded:
            return f"folded into {self.weight.split('/')[0]} (with {self.folded})"
        return self.weight or _short(self.name)


@dataclasses.dataclass
class TFLiteReport:
    """What a .tflite file holds: its size, its ops and how each weight is stored.

    Prints as a table. `ExportReport` adds what the export measured.

    Attributes:
        path: The file, or `None` for bytes that were not written.
        size: File size in bytes.
        ops: Count of each op type in the main subgraph.
        tensors: One `TensorEncoding` per constant weight tensor of 2 or more
            dimensions.
    """

    path: str | None
    size: int
    ops: dict
    tensors: list

    @property
    def densified_ops(self):
        """Names of the ops that read a weight through a DENSIFY op."""
        return sorted({t.op for t in self.tensors if t.densified})

    def _rows(self):
        width = max([len(t.label) for t in self.tensors] + [6])
        lines = [
            f"{'weight':<{width}}  {'op':<17} {'shape':<12} {'type':<7} {'encoding':<13} "
            f"{'block':<6} {'sparsity':>8}  {'bytes':>10}"
        ]
        for t in self.tensors:
            block = "x".join(map(str, t.block)) if t.block else "-"
            encoding = t.encoding + (" *" if t.densified else "")
            shape = "x".join(map(str, t.shape))
            lines.append(
                f"{t.label:<{width}}  {t.op:<17} {shape:<12} {t.dtype:<7} {encoding:<13} "
                f"{block:<6} {t.sparsity:>8.1%}  {t.nbytes:>10,}"
            )
        if any(t.densified for t in self.tensors):
            lines.append(
                "* stored sparse but DENSIFY'd at load time: smaller file, dense speed and memory"
            )
        return lines

    def __str__(self):
        head = f"{self.path or '<bytes>'}: {self.size:,} bytes"
        return "\n".join([head, *self._rows()])


@dataclasses.dataclass
class ExportReport(TFLiteReport):
    """The result of `export_tflite`: the file's contents and what was checked.

    Attributes:
        quantize: The quantization mode used.
        dense_size: Size in bytes of the same model exported without sparse
            encoding, for comparison.
        delegate_ok: Whether LiteRT's default delegate accepted the file.
        verification: A short line with the comparison against Keras, or `None`
            if `verify=False`.
        notes: Anything the user should know: the encoding not written and why,
            what the converter warned about.
        shrink: The `ShrinkReport` of the dead units removed before converting,
            or `None` if none were.
    """

    quantize: str | None = None
    dense_size: int = 0
    delegate_ok: bool = False
    verification: str | None = None
    notes: list = dataclasses.field(default_factory=list)
    shrink: object = None

    def __str__(self):
        ratio = self.dense_size / self.size if self.size else float("nan")
        lines = [
            f"{self.path}: {self.size:,} bytes; the dense export is {self.dense_size:,} bytes "
            f"({ratio:.1f}x); quantize={self.quantize}",
            *self._rows(),
            "LiteRT default delegate: " + ("accepted" if self.delegate_ok else "REFUSED"),
        ]
        if self.shrink is not None:
            s = self.shrink
            lines.append(
                f"Shrunk before converting: {s.params_before:,} → {s.params_after:,} parameters, "
                f"{s.macs_before:,} → {s.macs_after:,} MACs per example"
            )
        if self.verification:
            lines.append(f"Verified against Keras: {self.verification}")
        lines.extend(f"Note: {note}" for note in self.notes)
        return "\n".join(lines)


def _short(name, limit=40):
    name = name.split(";")[0]
    return name if len(name) <= limit else "..." + name[-(limit - 3) :]


def _read_tflite(path_or_bytes):
    """`(path, content, model)` of a .tflite file: `path` is `None` for bytes.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The bytes are not a .tflite file.
    """
    if isinstance(path_or_bytes, (bytes, bytearray)):
        path, content = None, bytes(path_or_bytes)
    else:
        path = os.fspath(path_or_bytes)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No such .tflite file: {path}")
        with open(path, "rb") as file:
            content = file.read()
    where = path or "The bytes given"
    flatbuffer.check_identifier(content, where)
    try:
        model = flatbuffer.read(content)
        if not model.subgraphs:
            raise ValueError("it has no subgraph")
    except Exception as error:  # the flatbuffer reader raises many kinds
        raise ValueError(
            f"{where} is not a valid .tflite file ({type(error).__name__}: {error})."
        ) from error
    return path, content, model


def _readers(model):
    """Op counts, and the op that reads each tensor, looking through DENSIFY."""
    names = flatbuffer.op_names(model)
    ops, readers, densify = {}, {}, {}
    for op in model.subgraphs[0].operators:
        name = names[op.opcodeIndex]
        ops[name] = ops.get(name, 0) + 1
        for index in op.inputs if op.inputs is not None else []:
            readers.setdefault(int(index), name)
        if name == "DENSIFY":
            densify[int(op.outputs[0])] = int(op.inputs[0])
    densified = {source: readers.get(out, "?") for out, source in densify.items()}
    return ops, {**readers, **densified}, set(densified)


def _encoding(index, tensor, data, readers, densified, weight_names, folded):
    shape = tuple(int(d) for d in tensor.shape)
    stored = flatbuffer.stored_values(tensor, data)
    block = flatbuffer.block_shape(tensor)
    if tensor.sparsity is not None:
        sparsity = 1.0 - stored.size / int(np.prod(shape))
        encoding = "block-sparse" if block else "random-sparse"
    else:
        sparsity = float(np.mean(stored == 0)) if stored.size else 0.0
        encoding = "dense"
    return TensorEncoding(
        name=flatbuffer.tensor_name(tensor),
        op=readers.get(index, "?"),
        shape=shape,
        dtype=flatbuffer.TYPE_NAME.get(tensor.type, str(tensor.type)),
        encoding=encoding,
        block=block,
        sparsity=sparsity,
        densified=index in densified,
        nbytes=len(data),
        weight=weight_names.get(index),
        folded=folded.get(index),
    )


def describe(model, path, size, weight_names=None, folded=None):
    """The `TFLiteReport` of a read file.

    `weight_names` maps tensor indices to Keras names, `folded` to the
    BatchNormalization folded into them.
    """
    ops, readers, densified = _readers(model)
    tensors = [
        _encoding(index, tensor, data, readers, densified, weight_names or {}, folded or {})
        for index, tensor, data in flatbuffer.constant_weights(model)
    ]
    return TFLiteReport(path=path, size=size, ops=ops, tensors=tensors)


def inspect_tflite(path_or_bytes):
    """Reads a .tflite file and reports how each weight tensor is stored.

    Works on any .tflite file, including ones made by TensorFlow's converter
    without tf_lottery: it reads the flatbuffer itself.

    Args:
        path_or_bytes: A file path, or the file's bytes.

    Returns:
        A `TFLiteReport`; `print()` it for the table.

    Example:

    ```python
    print(tf_lottery.inspect_tflite("lenet.tflite"))
    ```
    """
    path, content, model = _read_tflite(path_or_bytes)
    return describe(model, path, len(content))
