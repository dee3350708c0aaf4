"""llama.cpp as the runtime's decoder: token ids and visual embeddings in, next-token logits out.

Visual tokens enter llama.cpp as rows of a raw `llama_batch` whose `embd` is set (docs/design.md §4),
decoded in slices of at most `n_batch` rows: one `llama_decode` with more rows aborts the process.
One sequence (id 0) lives in the KV cache; its state can be saved and restored, so a video's prefix
(system prompt + visual tokens) is computed once and reused by every question about that video.
`sibling()` gives a second context (its own KV cache and sequence) on the same loaded weights: a live
window prefills the next window in one while questions are answered in the other. No torch here.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from panda_edge.backends import DEFAULT_KV_CACHE
from panda_edge.errors import BundleError, PandaError
from panda_edge.optional import llama_cpp
from panda_edge.runtime.llm.llamacpp import load_llama

SEQ = 0


class ContextFull(PandaError):
    """The conversation no longer fits the context window."""


class LlamaDecoder:
    """One GGUF in llama.cpp, one sequence, fed tokens or embeddings, giving last-position logits."""

    def __init__(
        self,
        path: str | Path,
        n_ctx: int = 4096,
        n_batch: int = 512,
        threads: int = 2,
        n_gpu_layers: int = 0,
        kv_cache: str = DEFAULT_KV_CACHE,
        lora: Path | None = None,
    ) -> None:
        """`kv_cache` f32 keeps the cache exact (parity runs); f16 is llama.cpp's default. `lora`: a
        LoRA GGUF applied at load."""
        lib = llama_cpp()
        self.lib = lib
        self.path = Path(path)
        self.llm = load_llama(self.path, n_ctx, n_batch, threads, n_gpu_layers, kv_cache, lora=lora)
        self._own_ctx = None  # a sibling's context, freed by its close (the Llama frees its own)
        self._setup(self.llm.ctx)

    def sibling(self) -> LlamaDecoder:
        """A decoder with its own context (KV cache, one sequence) on this one's loaded weights: the
        memory of one more KV cache and compute buffer, not of another copy of the GGUF. Close it
        before this one."""
        ctx = self.lib.llama_init_from_model(self.llm.model, self.llm.context_params)
        if not ctx:
            raise PandaError(
                f"{self.path}: llama.cpp could not create a second context of {self.n_ctx} tokens "
                "(not enough memory for its KV cache): use a smaller --n-ctx"
            )
        adapter = getattr(self.llm, "_lora_adapter", None)  # --lora: llama-cpp-python set it on its own
        if adapter is not None:
            adapters = (self.lib.llama_adapter_lora_p_ctypes * 1)(adapter)
            if self.lib.llama_set_adapters_lora(ctx, adapters, 1, (ctypes.c_float * 1)(self.llm.lora_scale)):
                self.lib.llama_free(ctx)
                raise PandaError(
                    f"{self.path}: llama.cpp could not apply the LoRA adapter to a second context"
                )
        other = LlamaDecoder.__new__(LlamaDecoder)
        other.lib, other.path, other.llm = self.lib, self.path, None
        other._own_ctx = ctx
        other._setup(ctx)
        return other

    def _setup(self, ctx) -> None:
        lib = self.lib
        self.ctx = ctx
        self.n_ctx = lib.llama_n_ctx(self.ctx)
        self.n_batch = lib.llama_n_batch(self.ctx)
        model = lib.llama_get_model(ctx)
        self.n_embd = lib.llama_model_n_embd(model)
        self.n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model))
        self.n_past = 0
        self._tokens = _Batch(lib, self.n_batch, 0)
        self._embeds = _Batch(lib, self.n_batch, self.n_embd)
        self._logits: np.ndarray | None = None

    # --- feeding ---------------------------------------------------------------------------------

    def feed_tokens(self, ids: Sequence[int]) -> None:
        """Append token ids to the sequence (in slices of n_batch)."""
        ids = np.asarray(ids, dtype=np.int32)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_vocab):
            raise PandaError(f"token id out of the GGUF's vocabulary of {self.n_vocab}")
        self._feed(self._tokens, len(ids), lambda batch, i, j: batch.set_tokens(ids[i:j]))

    def feed_embeddings(self, rows: np.ndarray) -> None:
        """Append (n, n_embd) float32 rows, e.g. one frame's visual tokens, in slices of n_batch."""
        if rows.ndim != 2 or rows.shape[1] != self.n_embd:
            raise BundleError(
                f"visual tokens of width {rows.shape[-1]} do not fit the GGUF's embedding size "
                f"{self.n_embd}; the vision graph and the GGUF come from different models"
            )
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        self._feed(self._embeds, len(rows), lambda batch, i, j: batch.set_embeddings(rows[i:j]))

    def _feed(self, batch: _Batch, n: int, fill) -> None:
        if n == 0:
            return
        if self.n_past + n > self.n_ctx:
            raise ContextFull(
                f"{self.n_past + n} tokens do not fit the context of {self.n_ctx}; "
                "start a new conversation or raise --n-ctx"
            )
        for i in range(0, n, self.n_batch):
            j = min(n, i + self.n_batch)
            fill(batch, i, j)
            batch.finish(j - i, self.n_past, want_logits=j == n)
            status = self.lib.llama_decode(self.ctx, batch.batch)
            if status != 0:
                raise PandaError(f"llama_decode failed with status {status} at position {self.n_past}")
            self.n_past += j - i
        self._logits = None

    # --- reading ---------------------------------------------------------------------------------

    def logits(self) -> np.ndarray:
        """(n_vocab,) float32 logits after the last fed position."""
        if self._logits is None:
            if self.n_past == 0:
                raise PandaError("nothing has been fed yet")
            pointer = self.lib.llama_get_logits_ith(self.ctx, -1)
            self._logits = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()
        return self._logits

    # --- the KV cache ----------------------------------------------------------------------------

    def truncate(self, n_past: int) -> None:
        """Forget every position from `n_past` on (0: an empty sequence)."""
        memory = self.lib.llama_get_memory(self.ctx)
        if n_past == 0:
            self.lib.llama_memory_clear(memory, True)
        else:
            self.lib.llama_memory_seq_rm(memory, SEQ, n_past, -1)
        self.n_past = min(self.n_past, n_past)
        self._logits = None

    def save_state_file(self, path: Path) -> int:
        """The sequence's KV cache straight into `path`: llama.cpp writes it tensor by tensor, so no copy
        of the whole state (565 MB for a 2:1 clip at 7B) is ever in memory. Returns the bytes written."""
        # llama.cpp keeps a token list beside the state (ours are mostly embeddings: zeros); reading it
        # back into no buffer gave a state with other logits (llama-cpp-python 0.3.36), so both give one
        tokens = (ctypes.c_int32 * max(1, self.n_past))()
        written = self.lib.llama_state_seq_save_file(self.ctx, str(path).encode(), SEQ, tokens, len(tokens))
        if written == 0:
            raise PandaError(f"llama.cpp could not write the KV state to {path}")
        return int(written)

    def load_state_file(self, path: Path, n_past: int) -> bool:
        """Replace the sequence by one `save_state_file` wrote; False (and an empty sequence) when
        llama.cpp refuses it (another GGUF, KV type or context size, or a damaged file)."""
        self.truncate(0)
        count, tokens = ctypes.c_size_t(0), (ctypes.c_int32 * self.n_ctx)()
        read = self.lib.llama_state_seq_load_file(
            self.ctx, str(path).encode(), SEQ, tokens, len(tokens), ctypes.byref(count)
        )
        if read == 0:
            self.truncate(0)
            return False
        self.n_past = n_past
        return True

    def close(self) -> None:
        self._tokens.free()
        self._embeds.free()
        if self._own_ctx is not None:
            self.lib.llama_free(self._own_ctx)
            self._own_ctx = None
        if self.llm is not None:
            self.llm.close()
            self.llm = None

    def __enter__(self) -> LlamaDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Batch:
    """A `llama_batch` of up to `capacity` rows: token ids (n_embd 0) or embeddings, sequence 0."""

    def __init__(self, lib, capacity: int, n_embd: int) -> None:
        self.lib = lib
        self.n_embd = n_embd
        self.batch = lib.llama_batch_init(capacity, n_embd, 1)
        self.pos = np.ctypeslib.as_array(self.batch.pos, shape=(capacity,))
        self.logits = np.ctypeslib.as_array(self.batch.logits, shape=(capacity,))
        n_seq = np.ctypeslib.as_array(self.batch.n_seq_id, shape=(capacity,))
        n_seq[:] = 1
        for i in range(capacity):
            self.batch.seq_id[i][0] = SEQ
        self.token = None if n_embd else np.ctypeslib.as_array(self.batch.token, shape=(capacity,))
        self.embd = np.ctypeslib.as_array(self.batch.embd, shape=(capacity, n_embd)) if n_embd else None
        self._freed = False

    def set_tokens(self, ids: np.ndarray) -> None:
        self.token[: len(ids)] = ids

    def set_embeddings(self, rows: np.ndarray) -> None:
        self.embd[: len(rows)] = rows

    def finish(self, n: int, start: int, want_logits: bool) -> None:
        self.batch.n_tokens = n
        self.pos[:n] = np.arange(start, start + n, dtype=np.int32)
        self.logits[:n] = 0
        self.logits[n - 1] = 1 if want_logits else 0

    def free(self) -> None:
        if not self._freed:
            self.lib.llama_batch_free(self.batch)
            self._freed = True
