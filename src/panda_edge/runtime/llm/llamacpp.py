"""Loading a GGUF into llama.cpp through llama-cpp-python, and parity's all-position logits (no torch).

`load_llama` is how every caller loads a GGUF (the runtime's `LlamaDecoder`, parity, the llm
benchmark): it sets the KV cache type, keeps llama.cpp off its AMX buffers, turns llama-cpp-python's
bare ValueError into an error that says what to do, and lets llama.cpp's own log through at `-v`.
`LlamaCppModel` gives token ids -> logits at every position and text -> ids, for the llm and
tokenizer parity levels; the runtime's embeddings input is `decoder.py`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from panda_edge.backends import DEFAULT_KV_CACHE, SMALLER_GGUF_TYPE, SMALLER_KV_CACHE, check_kv_cache
from panda_edge.errors import BundleError, PandaError
from panda_edge.optional import llama_cpp, native_log_level

log = logging.getLogger(__name__)


def load_llama(
    path: Path,
    n_ctx: int,
    n_batch: int,
    threads: int,
    n_gpu_layers: int = 0,
    kv_cache: str = DEFAULT_KV_CACHE,
    logits_all: bool = False,
    vocab_only: bool = False,
    lora: Path | None = None,
):
    """A `llama_cpp.Llama` on `path` with the KV cache element type named by `kv_cache`; llama.cpp's own
    log (the load report) goes to stderr only when panda_edge logs at DEBUG (`panda -v`). `lora`: a
    llama.cpp LoRA GGUF (`panda export --target gguf --lora`) applied at load, at scale 1."""
    lib = llama_cpp()
    if not path.is_file():
        raise BundleError(f"{path}: no such GGUF file")
    if lora is not None and not Path(lora).is_file():
        raise PandaError(f"--lora {lora}: no such file")
    kv = check_kv_cache(kv_cache)
    log.info(
        "loading %s into llama.cpp: n_ctx %d, n_batch %d, %d threads, %d GPU layers, %s KV cache",
        path,
        n_ctx,
        n_batch,
        threads,
        n_gpu_layers,
        kv_cache,
    )
    if n_gpu_layers and not vocab_only and not gpu_offload():
        log.warning(
            "--n-gpu-layers %d: this llama-cpp-python has no GPU backend, every layer runs on the CPU; "
            'build it with CUDA: CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir '
            "llama-cpp-python",
            n_gpu_layers,
        )
    repacks = n_gpu_layers == 0 and not vocab_only and not _has_amx(lib)
    try:
        with _plain_cpu_buffers(lib):
            return lib.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_ubatch=min(n_batch, 512),
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=n_gpu_layers,
                use_mmap=not repacks,
                logits_all=logits_all,
                vocab_only=vocab_only,
                type_k=kv.ggml_id,
                type_v=kv.ggml_id,
                flash_attn=kv.flash_attn,
                verbose=native_log_level() <= logging.INFO,
                **({} if lora is None else {"lora_path": str(lora)}),
            )
    except ValueError as exc:  # llama-cpp-python's only report of a failed load; the reason went to stderr
        raise _load_error(path, exc, n_ctx, n_gpu_layers, kv_cache) from None
    except RuntimeError as exc:  # llama-cpp-python's report of an adapter llama.cpp refused
        if lora is None:
            raise
        raise PandaError(
            f"--lora {lora}: llama.cpp cannot apply it to {path.name} (not a LoRA GGUF of this model; {exc})"
        ) from None


def gpu_offload() -> bool:
    """Whether this llama.cpp can put layers on a GPU (built with CUDA, Metal, Vulkan...): without it
    llama.cpp ignores `n_gpu_layers`."""
    return bool(llama_cpp().llama_supports_gpu_offload())


def _has_amx(lib: Any) -> bool:
    """Whether this llama.cpp was built with AMX kernels (and so will load into plain buffers)."""
    return b"AMX_INT8 = 1" in lib.llama_print_system_info()


@contextmanager
def _plain_cpu_buffers(lib: Any) -> Iterator[None]:
    """Load weights into plain CPU buffers on CPUs with AMX: llama.cpp's AMX matmul (an "extra buffer
    type" it repacks q8_0/q4 weights into) segfaults in llama_decode on the tiny model's small
    matrices (ggml-org/llama.cpp#20824, open), so the same bundle crashed on a Sapphire Rapids CPU
    and ran elsewhere. llama-cpp-python does not pass `use_extra_bufts` through, so its default
    model parameters are adjusted while one Llama loads.

    Elsewhere llama.cpp repacks q4_0 / q4_K / iq4_nl weights into its CPU_REPACK buffers for its
    AVX2 / AVX-512 / NEON kernels. With the GGUF memory-mapped, the originals it read stay mapped
    beside the repacked copies (7B q4_k_m without AMX: 9.96 GB peak against 6.8 GB with plain
    buffers), so `load_llama` reads the file instead of mapping it whenever the weights stay on the
    CPU there: the repacked copy replaces the original and the run peaks at what `panda plan` counts."""
    if not _has_amx(lib):
        yield
        return
    module = sys.modules[lib.Llama.__module__].llama_cpp  # what llama.py calls
    defaults = module.llama_model_default_params

    def without_extra_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    module.llama_model_default_params = without_extra_buffers
    try:
        yield
    finally:
        module.llama_model_default_params = defaults


def _load_error(path: Path, exc: ValueError, n_ctx: int, n_gpu_layers: int, kv_cache: str) -> PandaError:
    """What to do about llama-cpp-python's ValueError: its message says which step failed."""
    message = str(exc)
    if "llama_context" in message:  # the weights loaded; the KV cache and buffers for n_ctx did not fit
        return PandaError(
            f"{path}: llama.cpp could not create a context of {n_ctx} tokens ({kv_cache} KV cache, "
            f"{n_gpu_layers} layers on the GPU): not enough memory for it. Use a smaller --n-ctx, fewer "
            f"--n-gpu-layers, --kv-type {SMALLER_KV_CACHE}, or a smaller GGUF "
            f"(--gguf-type {SMALLER_GGUF_TYPE})"
        )
    if "load model" in message:
        return BundleError(
            f"{path}: llama.cpp cannot load it ({message}): a truncated file, a GGUF this llama.cpp is "
            "too old for, or too little memory for its weights (try a smaller GGUF or fewer --n-gpu-layers)"
        )
    return PandaError(f"{path}: llama.cpp failed to load it ({message})")


class LlamaCppModel:
    """One GGUF loaded into llama.cpp with all-position logits (CPU, `threads` threads)."""

    def __init__(
        self,
        path: str | Path,
        n_ctx: int = 1024,
        threads: int = 2,
        vocab_only: bool = False,
        kv_cache: str = DEFAULT_KV_CACHE,
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
