"""Optional heavy packages, imported when first needed, with an install hint when missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from panda_edge.errors import MissingDependency


def require(module: str, extra: str) -> ModuleType:
    """Import `module`, or raise MissingDependency naming the panda-edge extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(module.split(".")[0], extra) from None
