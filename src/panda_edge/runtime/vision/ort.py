"""The ONNX Runtime vision backend: runs `stab.onnx` (the very graph TensorRT builds) without torch.

A bundle's INT8 graphs open by precision: `int8` is the CPU form (`stab.int8.cpu.onnx`, U8S8, what
ONNX Runtime runs fast on x86); `int8-tensorrt` is the TensorRT form (`stab.int8.onnx`) with its
Q/DQ computed in float, which is what TensorRT's int8 kernels compute (exact integer sums), so it
measures the TensorRT graph's accuracy on a machine without TensorRT.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from panda_edge.backends import FP32, INT8, ORT, TRT
from panda_edge.errors import BundleError
from panda_edge.host import default_threads
from panda_edge.optional import onnxruntime
from panda_edge.runtime.vision.base import TensorSpec, VisionBackend
from panda_edge.token_layout import FRAMES, METADATA_KEY, VISUAL_TOKENS, TokenLayout

log = logging.getLogger(__name__)

_ORT_TYPES = {"tensor(float)": np.dtype(np.float32)}
# Beside the precisions ONNX Runtime runs (backends.PRECISIONS): the TensorRT INT8 graph, its Q/DQ
# computed in float, to measure that graph's accuracy where there is no TensorRT.
INT8_TENSORRT = "int8-tensorrt"


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, CPU always."""
    ort = onnxruntime()
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def session_options(threads: int, qdq_in_float: bool = False):
    """All graph optimizations, `threads` intra-op threads; `qdq_in_float` keeps ONNX Runtime from
    fusing Q/DQ into its integer kernels, so quantization is simulated in float."""
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    if qdq_in_float:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    return options


class OrtVisionEngine(VisionBackend):
    """ONNX Runtime session over one STAB graph (fp32 or INT8 Q/DQ); graph optimizations on,
    `host.default_threads(threads)` intra-op threads."""

    name = "ort"

    def __init__(
        self,
        onnx_path: str | Path,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        qdq_in_float: bool = False,
    ) -> None:
        super().__init__()
        self.onnx_path = Path(onnx_path)
        self.providers = list(providers) if providers is not None else None
        self.threads = default_threads(threads)
        self.qdq_in_float = qdq_in_float
        self.session = None

    @classmethod
    def from_bundle(
        cls,
        bundle: str | Path,
        providers: Sequence[str] | None = None,
        precision: str = FP32,
        threads: int | None = None,
    ) -> OrtVisionEngine:
        """The bundle's graph of `precision` (fp32, int8, int8-tensorrt), after its manifest's hashes
        are checked."""
        from panda_edge.bundle import Manifest

        manifest = Manifest.load(bundle)
        if precision == INT8_TENSORRT:  # the graph TensorRT builds its int8 engine from
            return cls(manifest.vision_graph(TRT, INT8), providers, threads, qdq_in_float=True)
        return cls(manifest.vision_graph(ORT, precision), providers, threads)

    def _activate(self) -> None:
        ort = onnxruntime()
        if not self.onnx_path.is_file():
            raise BundleError(f"{self.onnx_path}: no such ONNX file")
        options = session_options(self.threads, self.qdq_in_float)
        providers = self.providers if self.providers is not None else default_providers()
        log.info(
            "ONNX Runtime session on %s (%s, %d threads)", self.onnx_path, ", ".join(providers), self.threads
        )
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

    def input_metadata(self) -> dict[str, TensorSpec]:
        self._require_active()
        return {
            i.name: TensorSpec(tuple(i.shape), _ORT_TYPES.get(i.type, np.dtype(object)))
            for i in self.session.get_inputs()
        }

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        (tokens,) = self.session.run([VISUAL_TOKENS], {FRAMES: feed[FRAMES]})
        return {VISUAL_TOKENS: tokens}
