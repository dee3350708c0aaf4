"""TensorRT and the GPU as this process finds them: lazy imports and one status check.

TensorRT's Python package does not come from the registries panda-edge installs from: on Jetson it
is part of JetPack (apt `python3-libnvinfer`), on a desktop NVIDIA's `pip install tensorrt`. GPU
memory and the device's name come from cuda-python (`pip install 'panda-edge[trt]'`), imported as
`cuda.bindings.runtime` (cuda-python >= 12.6) or `cuda.cudart` (older releases).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from panda_edge.errors import MissingDependency, PandaError
from panda_edge.optional import native_log_level
from panda_edge.trt.record import GpuInfo
from panda_edge.trt.versions import TrtUnsupported, TrtVersion, family_for

TENSORRT_HINT = (
    "TensorRT's Python package is not installed: on Jetson it comes with JetPack "
    "(sudo apt install python3-libnvinfer; in a venv made with --system-site-packages), "
    "on a desktop: pip install tensorrt"
)


class TrtUnavailable(PandaError):
    """TensorRT or a GPU is missing here; the message says what to install or where to build."""


def tensorrt() -> ModuleType:
    try:
        return importlib.import_module("tensorrt")
    except ImportError:
        raise TrtUnavailable(TENSORRT_HINT) from None


def trt_logger(trt: ModuleType) -> Any:
    """A TensorRT logger as loud as `native_log_level()`: INFO at `panda -v`, warnings by default."""
    level = native_log_level()
    if level <= logging.INFO:
        return trt.Logger(trt.Logger.INFO)
    return trt.Logger(trt.Logger.WARNING if level <= logging.WARNING else trt.Logger.ERROR)


def cudart() -> ModuleType:
    """The CUDA runtime bindings of cuda-python, new layout first."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise MissingDependency("cuda-python", "trt")


def cuda_check(result: Any) -> Any:
    """cuda-python returns (error, *values): raise on an error, return the value(s)."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        rt = cudart()
        _, text = rt.cudaGetErrorString(error)
        message = text.decode() if isinstance(text, bytes) else str(text)
        raise TrtUnavailable(f"CUDA error {int(error)}: {message}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def gpu_info(device: int = 0) -> GpuInfo:
    rt = cudart()
    count = cuda_check(rt.cudaGetDeviceCount())
    if count < 1 or device >= count:
        raise TrtUnavailable(f"no CUDA GPU {device} here ({count} visible)")
    props = cuda_check(rt.cudaGetDeviceProperties(device))
    name = props.name.split(b"\0", 1)[0].decode() if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(name.strip(), f"{props.major}.{props.minor}")


def installed_version() -> TrtVersion:
    return TrtVersion.parse(tensorrt().__version__)


@dataclass(frozen=True)
class TrtStatus:
    """Whether engines can be built and run here; `reason` says why not."""

    usable: bool
    reason: str
    tensorrt: str | None = None
    gpu: GpuInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "usable": self.usable,
            "reason": self.reason,
            "tensorrt": self.tensorrt,
            "gpu": self.gpu.to_dict() if self.gpu else None,
        }


def trt_status(device: int = 0) -> TrtStatus:
    """Looks for TensorRT (a supported release), cuda-python and a GPU, in that order."""
    try:
        version = installed_version()
        family_for(version)
    except (TrtUnavailable, TrtUnsupported) as exc:
        return TrtStatus(False, str(exc))
    except Exception as exc:  # a broken TensorRT install fails on import in its own ways
        return TrtStatus(False, f"TensorRT does not import here ({type(exc).__name__}: {exc})")
    try:
        gpu = gpu_info(device)
    except PandaError as exc:
        return TrtStatus(False, str(exc), str(version))
    except Exception as exc:  # no driver: cuda-python raises from its loader
        return TrtStatus(False, f"no usable CUDA GPU ({type(exc).__name__}: {exc})", str(version))
    return TrtStatus(True, f"TensorRT {version} on {gpu}", str(version), gpu)
