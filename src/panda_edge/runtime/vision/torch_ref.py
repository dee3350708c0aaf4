"""The PyTorch reference as a vision backend, so parity compares two engines through one contract.

`encode` is the reference itself (`VideoPanda.encode_frames`); `infer` runs the export module in
eager PyTorch, the graph before ONNX conversion. Both run where the model's weights are (CPU or a
CUDA GPU) at their dtype, and give float32 arrays on the host. torch is imported only when this
backend is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from panda_edge.runtime.vision.base import VisionBackend
from panda_edge.token_layout import FRAMES, VISUAL_TOKENS


class TorchVisionReference(VisionBackend):
    """Wraps a `VideoPanda` or a `VisionTower` (`config`, `stab`, `projector`, `encode_frames`)."""

    name = "torch"

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self._static = None

    def weights_sha256(self) -> str:
        """The sha256 of STAB's and the projector's weights (names, dtypes, shapes and bytes): what a
        prefix computed by this backend depends on, whichever checkpoint directory they came from."""
        import hashlib

        import torch

        digest = hashlib.sha256()
        for part in (self.model.stab, self.model.projector):
            for name, tensor in part.state_dict().items():
                digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
                digest.update(raw.numpy().tobytes())
        return digest.hexdigest()

    def _activate(self) -> None:
        from panda_edge.model.static_stab import StabForOnnx

        self.model.eval()
        self._static = StabForOnnx(self.model.stab, self.model.projector)
        self._layout = self._static.layout()

    def _deactivate(self) -> None:
        self._static = None

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        weight = self.model.stab.patch_embedding.weight
        with torch.inference_mode():
            tokens = self._static(torch.from_numpy(feed[FRAMES]).to(weight.device, weight.dtype))
        return {VISUAL_TOKENS: tokens.float().cpu().numpy()}

    def encode(self, frames: np.ndarray) -> list[np.ndarray]:
        import torch

        self._require_active()
        frames = self._check_frames(np.ascontiguousarray(frames, dtype=np.float32))
        with torch.inference_mode():
            tokens = self.model.encode_frames(torch.from_numpy(frames))
        return [t.float().cpu().numpy() for t in tokens]
