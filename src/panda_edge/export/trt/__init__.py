"""ONNX -> TensorRT engine, built on the device that runs it, and recorded in the bundle's manifest.

`script` writes `build_engine.sh` (`trtexec`), `build` calls TensorRT's builder, `engines` ties them
to the bundle. What an engine is and whether it runs here is `panda_edge.trt`. No torch here.
"""
