"""The TensorRT vision backend: the bundle's engine for this GPU, run from device buffers (no torch).

Activating checks the manifest (hashes included), picks the engine of the asked precision that was
built with this TensorRT release on this GPU model, and refuses any other with a message that says
to rebuild it here. Inputs and outputs are the fp32 graph's (float32 frames -> float32 tokens) for
every precision, so `encode` and parity treat this backend like `ort`. Device memory, the stream
and the copies go through cuda-python's runtime API; execution is `execute_async_v3` with
tensor addresses (TensorRT 8.5 and later).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from panda_edge.backends import FP16
from panda_edge.bundle import Engine, Manifest
from panda_edge.errors import BundleError
from panda_edge.runtime.vision.base import TensorSpec, VisionBackend
from panda_edge.token_layout import FRAMES, VISUAL_TOKENS, TokenLayout
from panda_edge.trt.device import (
    TrtStatus,
    TrtUnavailable,
    cuda_check,
    cudart,
    tensorrt,
    trt_logger,
    trt_status,
)
from panda_edge.trt.record import engines_of_precision, select_engine
from panda_edge.trt.versions import TrtVersion

log = logging.getLogger(__name__)


def trt_available(device: int = 0) -> TrtStatus:
    """Whether this backend can run here (TensorRT 8.5+, cuda-python, a GPU); `.reason` says why not."""
    return trt_status(device)


def layout_from_manifest(manifest: Manifest) -> TokenLayout:
    """The graph geometry from the manifest (a device has no onnx package to read the graph's metadata)."""
    return TokenLayout.from_config(manifest.config.vision, manifest.token_width)


class TrtVisionEngine(VisionBackend):
    """`with TrtVisionEngine(bundle, precision="fp16") as engine: engine.encode(frames)`."""

    name = "trt"

    def __init__(self, bundle: str | Path, precision: str = FP16, device: int = 0) -> None:
        super().__init__()
        self.bundle = Path(bundle)
        self.precision = precision
        self.device = device
        self.record: Engine | None = None
        self._logger = self._runtime = self._engine = self._context = self._stream = None
        self._buffers: dict[str, tuple[int, np.ndarray]] = {}  # name -> (device pointer, host array)

    def _activate(self) -> None:
        manifest = Manifest.load(self.bundle)  # every engine's file name checked, on any machine
        engines_of_precision(manifest, self.precision, str(self.bundle))  # no other precision stands in
        status = trt_available(self.device)
        if not status.usable:
            raise TrtUnavailable(f"the trt vision backend cannot run here: {status.reason}")
        record = select_engine(
            manifest, self.precision, TrtVersion.parse(status.tensorrt), status.gpu, bundle=str(self.bundle)
        )
        self._layout = layout_from_manifest(manifest)
        log.info("TensorRT %s engine %s on %s", self.precision, record.file, status.gpu)
        trt, rt = tensorrt(), cudart()
        cuda_check(rt.cudaSetDevice(self.device))
        data = manifest.path(record.file).read_bytes()
        self._logger = trt_logger(trt)
        self._runtime = trt.Runtime(self._logger)  # outlives the engine
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise BundleError(
                f"{self.bundle / record.file}: TensorRT could not deserialize it; rebuild it here with "
                f"panda build-engine --bundle {self.bundle} --precision {self.precision}"
            )
        self._context = self._engine.create_execution_context()
        self._stream = cuda_check(rt.cudaStreamCreate())
        try:
            self._allocate(trt, rt)
        except BaseException:
            self._deactivate()
            raise
        self.record = record

    def _allocate(self, trt: Any, rt: Any) -> None:
        expected = {FRAMES: self._layout.frames_shape, VISUAL_TOKENS: self._layout.tokens_shape}
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        if sorted(names) != sorted(expected):
            raise BundleError(f"{self.bundle}: the engine's tensors are {names}, expected {sorted(expected)}")
        for name in names:
            shape = tuple(int(d) for d in self._engine.get_tensor_shape(name))
            if shape != expected[name]:
                raise BundleError(
                    f"{self.bundle}: the engine's '{name}' is {shape}, the manifest says {expected[name]}"
                )
            host = np.empty(shape, dtype=trt.nptype(self._engine.get_tensor_dtype(name)))
            pointer = cuda_check(rt.cudaMalloc(host.nbytes))
            self._buffers[name] = (int(pointer), host)
            self._context.set_tensor_address(name, int(pointer))

    def _deactivate(self) -> None:
        rt = cudart()
        for pointer, _ in self._buffers.values():
            rt.cudaFree(pointer)
        self._buffers = {}
        if self._stream is not None:
            rt.cudaStreamDestroy(self._stream)
        self._context = self._engine = self._stream = None
        self._runtime = None  # last: the engine must go first

    def input_metadata(self) -> dict[str, TensorSpec]:
        self._require_active()
        _, host = self._buffers[FRAMES]
        return {FRAMES: TensorSpec(host.shape, host.dtype)}

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rt = cudart()
        to_device = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        to_host = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        frames = np.ascontiguousarray(feed[FRAMES])
        in_ptr, _ = self._buffers[FRAMES]
        out_ptr, out_host = self._buffers[VISUAL_TOKENS]
        cuda_check(rt.cudaMemcpyAsync(in_ptr, frames.ctypes.data, frames.nbytes, to_device, self._stream))
        if not self._context.execute_async_v3(self._stream_handle()):
            raise BundleError(f"{self.bundle}: TensorRT failed to run the engine")
        cuda_check(rt.cudaMemcpyAsync(out_host.ctypes.data, out_ptr, out_host.nbytes, to_host, self._stream))
        cuda_check(rt.cudaStreamSynchronize(self._stream))
        return {VISUAL_TOKENS: out_host.astype(np.float32, copy=True)}

    def _stream_handle(self) -> int:
        """TensorRT takes the stream as an integer handle; cuda-python's cudaStream_t converts to one."""
        return int(self._stream)
