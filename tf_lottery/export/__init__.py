"""From a pruned Keras model to a LiteRT file, and reading and running such files.

- `tflite`: `export_tflite` converts, picks the sparse encoding and checks the file.
- `blocks`: what LiteRT's sparse kernels need (block shapes, the partial-block
  rule). These facts live here, on the export side; criteria read them when given
  `block="tflite-float"` or `"tflite-int8"`, and `shrink` when it decides to run.
- `report`: `inspect_tflite`, `TFLiteReport`, `ExportReport`.
- `flatbuffer`: reading a .tflite file's ops, weights, sparse and quantized values.
- `litert`: `run_tflite`, loading and running a file in LiteRT.
- `latency`: `litert_latency`, `LatencyMeter`, `LatencyTable`.
- `samples`: model inputs given as arrays, lists, dicts or datasets.
- `capture`: silencing TensorFlow's and LiteRT's C++ logs.

`flatbuffer`, `litert`, `report`, `samples` and `capture` import neither Keras nor
TensorFlow, and this file imports nothing, so that `tf_lottery.export.litert` stays
light (docs/imports.md).
"""
