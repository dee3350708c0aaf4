"""A GGUF decoder through llama-cpp-python: token ids -> logits, text -> ids (no torch).

Parity and benchmarks use this; the chat runtime will add embeddings input on top of it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import numpy as np

from panda_edge.errors import BundleError, PandaError
from panda_edge.lazy import llama_cpp

# ggml_type ids of the KV cache element types we use; a quantized V cache needs flash attention.
KV_TYPES = {"f32": 0, "f16": 1, "q8_0": 8}


def load_llama(
    path: Path,
    n_ctx: int,
    n_batch: int,
    threads: int,
    n_gpu_layers: int = 0,
    kv_cache: str = "f16",
    logits_all: bool = False,
    vocab_only: bool = False,
):
    """A `llama_cpp.Llama` on `path`, quiet, with the KV cache element type named by `kv_cache`."""
    lib = llama_cpp()
    if not path.is_file():
        raise BundleError(f"{path}: no such GGUF file")
    if kv_cache not in KV_TYPES:
        raise PandaError(f"unknown KV cache type '{kv_cache}'; choose one of: {', '.join(KV_TYPES)}")
    with _model_defaults(lib, use_extra_bufts=not amx_cpu()):
        return lib.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_ubatch=min(n_batch, 512),
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=n_gpu_layers,
            logits_all=logits_all,
            vocab_only=vocab_only,
            type_k=KV_TYPES[kv_cache],
            type_v=KV_TYPES[kv_cache],
            flash_attn=kv_cache == "q8_0",
            verbose=False,
        )


@cache
def amx_cpu() -> bool:
    """Whether this llama.cpp build runs its AMX kernels (Intel Xeon since Sapphire Rapids).

    Its AMX buffer type crashes on our q8_0 and q4_k_m GGUFs (a segmentation fault in the first
    decode, measured with llama-cpp-python 0.3.36 on a Xeon with AMX_INT8; llama.cpp issues #20824,
    #16315 report crashes and wrong results there), so on such CPUs the decoder does without it.
    """
    return "AMX_INT8 = 1" in llama_cpp().llama_print_system_info().decode(errors="replace")


@contextmanager
def _model_defaults(lib, use_extra_bufts: bool) -> Iterator[None]:
    """llama-cpp-python's `Llama` does not expose `use_extra_bufts` (AMX and repacked weight layouts);
    it starts from `llama_model_default_params()`, so this load gets defaults with it turned off."""
    binding = lib.llama_cpp
    original = binding.llama_model_default_params
    if use_extra_bufts or not hasattr(original(), "use_extra_bufts"):
        yield
        return

    def defaults():
        params = original()
        params.use_extra_bufts = False
        return params

    binding.llama_model_default_params = defaults
    try:
        yield
    finally:
        binding.llama_model_default_params = original


class LlamaCppModel:
    """One GGUF loaded into llama.cpp with all-position logits (CPU, `threads` threads)."""

    def __init__(
        self,
        path: str | Path,
        n_ctx: int = 1024,
        threads: int = 2,
        vocab_only: bool = False,
        kv_cache: str = "f16",
    ) -> None:
        """`kv_cache` f32 keeps llama.cpp's cache exact (parity); f16 is its default (runtime)."""
        self.path = Path(path)
        self.n_ctx = n_ctx
        self.llm = load_llama(
            self.path, n_ctx, n_ctx, threads, kv_cache=kv_cache, logits_all=True, vocab_only=vocab_only
        )

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """(len(ids), vocab) float32 logits of a fresh sequence (the KV cache is cleared first)."""
        if len(ids) > self.n_ctx:
            raise ValueError(f"{len(ids)} tokens do not fit the context of {self.n_ctx}")
        self.llm.reset()
        self.llm.eval(list(ids))
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def tokenize(self, text: str, bos: bool = False) -> list[int]:
        """llama.cpp's tokenization of plain text (special-token text is not parsed)."""
        if not text:
            return [self.llm.token_bos()] if bos else []
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=bos, special=False))

    def close(self) -> None:
        self.llm.close()

    def __enter__(self) -> LlamaCppModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
