"""Optional heavy packages, imported when first needed, with an install hint when missing; and how
loud their own native logs (llama.cpp, ONNX Runtime, TensorRT) are: as loud as panda_edge's log."""

from __future__ import annotations

import importlib
import importlib.util
import logging
from types import ModuleType

from panda_edge.errors import MissingDependency


def require(module: str, extra: str) -> ModuleType:
    """Import `module`, or raise MissingDependency naming the panda-edge extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(module.split(".")[0], extra) from None


def llama_cpp() -> ModuleType:
    """llama-cpp-python (the `llama` extra): the GGUF runtime, quantizer and parity engine."""
    return require("llama_cpp", "llama")


def has_llama_cpp() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def onnxruntime() -> ModuleType:
    """onnxruntime (the `full` extra), its log set to `native_log_level()`: every session, ours and the
    ones its quantization tools open, logs at its default severity."""
    ort = require("onnxruntime", "full")
    level = native_log_level()
    ort.set_default_logger_severity(1 if level <= logging.INFO else 2 if level <= logging.WARNING else 3)
    return ort


def native_log_level() -> int:
    """What the native libraries should log, as a `logging` level: INFO when panda_edge logs at DEBUG
    (`panda -v`: llama.cpp's load log, ONNX Runtime's and TensorRT's info), else panda_edge's own
    level (warnings by default, errors only at `panda -q`). Their DEBUG/VERBOSE logs are floods."""
    level = logging.getLogger("panda_edge").getEffectiveLevel()
    return max(level, logging.INFO)
