"""Vision backends behind one contract (see `base.py`); importing this package needs no torch.

- `ort`: `OrtVisionEngine(onnx_path)` or `OrtVisionEngine.from_bundle(bundle)`, numpy + onnxruntime.
- `trt`: `TrtVisionEngine(bundle, precision)`, the bundle's TensorRT engine for this GPU (TensorRT +
  cuda-python); `trt_available()` says whether it can run here and why not.
- `torch`: `TorchVisionReference(model)`, the PyTorch reference (imports torch when activated).
"""

from panda_edge.runtime.vision.base import TensorSpec, VisionBackend
from panda_edge.runtime.vision.ort import OrtVisionEngine
from panda_edge.runtime.vision.torch_ref import TorchVisionReference
from panda_edge.runtime.vision.trt import TrtVisionEngine, trt_available

__all__ = [
    "OrtVisionEngine",
    "TensorSpec",
    "TorchVisionReference",
    "TrtVisionEngine",
    "VisionBackend",
    "trt_available",
]
