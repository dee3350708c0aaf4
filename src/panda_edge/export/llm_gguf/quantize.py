"""K-quants (Q4_K_M, Q5_K_M) through llama.cpp's own quantizer, via llama-cpp-python.

gguf-py does not write K-quants; llama.cpp's `llama_model_quantize` requantizes a GGUF we wrote
(f16) and picks the per-tensor mix that the `_M` variants define. Rows that are not a multiple of
256 cannot be K-quantized; llama.cpp then falls back to another type for that tensor and says so
in its log, which we count from the result file instead.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

from panda_edge.errors import PandaError
from panda_edge.optional import llama_cpp, native_log_level


def kquantize(source: Path, target: Path, ftype_name: str, threads: int | None = None) -> None:
    """Requantize the GGUF `source` into `target` with the llama_ftype named `ftype_name`, on `threads`
    threads (default: the idle cores, `host.default_threads`; the result does not depend on it, each
    row is quantized on its own)."""
    from panda_edge.host import default_threads

    lib = llama_cpp()
    _log_level()
    params = lib.llama_model_quantize_default_params()
    params.ftype = getattr(lib, ftype_name)
    params.nthread = default_threads(threads)
    status = lib.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if status != 0:
        raise PandaError(f"llama.cpp could not quantize {source.name} to {ftype_name} (status {status})")


def tensor_types(path: Path) -> dict[str, str]:
    """GGUF tensor name -> storage type, read back from the file (what llama.cpp actually chose)."""
    import gguf

    reader = gguf.GGUFReader(path)
    return {t.name: t.tensor_type.name for t in reader.tensors}


def _log_level() -> None:
    """llama.cpp logs every tensor to stderr: errors only (the result file says what it chose), unless
    panda_edge logs at DEBUG (`panda -v`)."""
    try:
        from llama_cpp._logger import set_verbose
    except ImportError:  # another llama-cpp-python layout: its log stays on
        return
    set_verbose(native_log_level() <= logging.INFO)
