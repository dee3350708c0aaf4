"""ONNX -> TensorRT engine, built on the device that runs it, and the engine's manifest record.

Pure logic, checked without TensorRT: `versions` (what each TensorRT family needs), `recipe` (which
graph and flags for a bundle, the `trtexec` command), `record` (engine records, compatibility,
`trtexec` logs), `script` (`build_engine.sh`). `device` imports TensorRT and cuda-python lazily;
`build` calls TensorRT's builder; `pipeline` ties them to the bundle. None of them imports torch.
"""
