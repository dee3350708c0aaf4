"""STAB + projector -> ONNX per TensorRT profile (the profiles themselves: `panda_edge.backends`).

`check` (static checks) and `fp16` (the fp16 graph) need no torch; `convert` and `export_onnx` do.
"""
