"""INT8 for the vision graph: calibration on CPU, Q/DQ in the ONNX (TensorRT 11 has no calibrators).

- `data`: calibration videos, pre-processed as inference does, kept in the bundle's `calibration.npz`;
- `ranges`: activation ranges of the fp32 graph (ONNX Runtime's entropy / minmax / percentile);
- `qdq`: both Q/DQ forms from one set of ranges (TensorRT: int8 symmetric; CPU: U8S8);
- `groups` + `search`: per-layer-group sensitivity and the float fallback to a target cosine;
- `calibrate`: `calibrate_bundle` (what `panda calibrate` runs) and `calibrate_graph`.

Importing this package is cheap; onnx and onnxruntime load in the modules that use them.
"""
