"""STAB + projector -> ONNX per TensorRT profile.

`profiles` (data) and `check` (static checks) need no torch; `module`, `convert` and `pipeline` do.
"""
