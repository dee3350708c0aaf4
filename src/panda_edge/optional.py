"""Optional heavy packages, imported when first needed, with an install hint when missing."""

from __future__ import annotations

import importlib
import importlib.util
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
