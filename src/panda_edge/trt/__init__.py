"""TensorRT facts shared by the engine builder (`export/trt`) and the runtime's trt backend.

Pure logic, checked without TensorRT: `versions` (a TensorRT version's family; the targets are in
`panda_edge.backends`), `build_recipe` (which
graph and flags for a bundle, the `trtexec` command), `record` (engine records in the manifest,
whether one runs here, `trtexec` logs). `device` imports TensorRT and cuda-python lazily and says
whether this machine can build and run engines. Nothing here imports torch, export or the runtime.
"""
