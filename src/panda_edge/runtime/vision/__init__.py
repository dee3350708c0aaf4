"""Vision backends behind one contract (see `base.py`); importing this package needs no torch.

- `ort`: `OrtVisionEngine(onnx_path)` or `OrtVisionEngine.from_bundle(bundle)`, numpy + onnxruntime.
- `torch`: `TorchVisionReference(model)`, the PyTorch reference (imports torch when activated).
"""

from panda_edge.runtime.vision.base import TensorSpec, VisionBackend
from panda_edge.runtime.vision.layout import TokenLayout, WindowRect
from panda_edge.runtime.vision.ort import OrtVisionEngine
from panda_edge.runtime.vision.torch_ref import TorchVisionReference

__all__ = [
    "OrtVisionEngine",
    "TensorSpec",
    "TokenLayout",
    "TorchVisionReference",
    "VisionBackend",
    "WindowRect",
]
