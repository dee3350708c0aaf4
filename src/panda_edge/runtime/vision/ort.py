"""The ONNX Runtime vision backend: runs `stab.onnx` (the very graph TensorRT builds) without torch."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from panda_edge.errors import BundleError
from panda_edge.lazy import require
from panda_edge.runtime.vision.base import FRAMES, VISUAL_TOKENS, TensorSpec, VisionBackend
from panda_edge.runtime.vision.layout import METADATA_KEY, TokenLayout

_ORT_TYPES = {"tensor(float)": np.dtype(np.float32)}


def available_cores() -> int:
    """Cores this process may run on (the affinity mask in containers), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, CPU always."""
    ort = require("onnxruntime", extra="full")
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OrtVisionEngine(VisionBackend):
    """ONNX Runtime session over one STAB graph; graph optimizations on, one intra-op thread per core."""

    name = "ort"

    def __init__(
        self, onnx_path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None
    ) -> None:
        super().__init__()
        self.onnx_path = Path(onnx_path)
        self.providers = list(providers) if providers is not None else None
        self.threads = threads or available_cores()
        self.session = None
        self._layout: TokenLayout | None = None

    @classmethod
    def from_bundle(cls, bundle: str | Path, providers: Sequence[str] | None = None) -> OrtVisionEngine:
        """The bundle's graph, after its manifest's hashes are checked."""
        from panda_edge.bundle import load_manifest

        manifest = load_manifest(bundle)
        return cls(Path(bundle) / manifest["vision"]["file"], providers)

    def _activate(self) -> None:
        ort = require("onnxruntime", extra="full")
        if not self.onnx_path.is_file():
            raise BundleError(f"{self.onnx_path}: no such ONNX file")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        providers = self.providers if self.providers is not None else default_providers()
        try:
            self.session = ort.InferenceSession(str(self.onnx_path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(f"{self.onnx_path}: ONNX Runtime cannot load it ({exc})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise BundleError(f"{self.onnx_path}: not a panda-edge STAB graph (no '{METADATA_KEY}' metadata)")
        self._layout = TokenLayout.from_json(meta[METADATA_KEY])

    def _deactivate(self) -> None:
        self.session = None

    @property
    def layout(self) -> TokenLayout:
        self._require_active()
        return self._layout

    def input_metadata(self) -> dict[str, TensorSpec]:
        self._require_active()
        return {
            i.name: TensorSpec(tuple(i.shape), _ORT_TYPES.get(i.type, np.dtype(object)))
            for i in self.session.get_inputs()
        }

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        (tokens,) = self.session.run([VISUAL_TOKENS], {FRAMES: feed[FRAMES]})
        return {VISUAL_TOKENS: tokens}
