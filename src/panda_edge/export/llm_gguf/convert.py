"""Llama backbone of a Video-Panda checkpoint -> one GGUF file, streamed one tensor at a time.

Two passes over the checkpoint: the plan (names, shapes, target types) comes from the headers
alone, so the GGUF header and tensor index are written before any weight is read; then each tensor
is read in row blocks, permuted (q/k) and encoded into its output buffer, written, and dropped.
Peak memory is the largest output tensor plus one row block, whatever the model size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from panda_edge.config import LlmConfig
from panda_edge.errors import CheckpointError
from panda_edge.export.llm_gguf.names import ARCH, ARCH_NAME, PERMUTED, SKIP_PREFIXES, SKIP_SUFFIXES, GgufType
from panda_edge.export.llm_gguf.source import SourceTensor, list_tensors, read_rows
from panda_edge.export.llm_gguf.vocab import Vocab, add_vocab

Q = gguf.GGMLQuantizationType
BLOCK_BYTES = 32 << 20  # float32 bytes read per row block


@dataclass(frozen=True)
class PlanEntry:
    """One tensor of the GGUF: where it comes from and how it is stored."""

    source: SourceTensor
    gguf_name: str
    kind: gguf.MODEL_TENSOR
    tensor_type: gguf.GGMLQuantizationType
    heads: int = 0  # > 0: q/k rows are permuted per head for llama.cpp's RoPE

    @property
    def shape(self) -> tuple[int, ...]:
        return self.source.shape

    @property
    def out_dtype(self) -> np.dtype:
        """numpy dtype of the encoded array: float32/float16, or raw bytes for block types."""
        return np.dtype({Q.F32: np.float32, Q.F16: np.float16}.get(self.tensor_type, np.uint8))

    @property
    def out_shape(self) -> tuple[int, ...]:
        if self.out_dtype == np.uint8:
            return tuple(gguf.quant_shape_to_byte_shape(self.shape, self.tensor_type))
        return self.shape

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.out_shape, dtype=np.int64)) * self.out_dtype.itemsize

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source.name,
            "gguf": self.gguf_name,
            "shape": list(self.shape),
            "source_dtype": self.source.dtype,
            "type": self.tensor_type.name,
            "permuted": self.heads > 0,
        }


def plan_tensors(
    files: Sequence[Path], llm: LlmConfig, gtype: GgufType, permute: bool = True
) -> list[PlanEntry]:
    """Map every Llama tensor to its GGUF name and type; skip the vision side; refuse strangers.

    `permute=False` exists only to show (in tests) that the q/k permutation matters.
    """
    names = gguf.TensorNameMap(ARCH, llm.num_hidden_layers)
    entries: list[PlanEntry] = []
    for src in list_tensors(list(files)):
        if src.name.startswith(SKIP_PREFIXES) or src.name.endswith(SKIP_SUFFIXES):
            continue
        found = names.get_type_and_name(src.name, try_suffixes=(".weight", ".bias"))
        if found is None:
            raise CheckpointError(f"cannot map checkpoint tensor '{src.name}' to a llama GGUF tensor")
        kind, gguf_name = found
        heads = getattr(llm, PERMUTED[kind]) if permute and kind in PERMUTED else 0
        entries.append(PlanEntry(src, gguf_name, kind, _tensor_type(src.shape, gtype), heads))
    _check_complete(entries, llm)
    return sorted(entries, key=_file_order)


def _file_order(entry: PlanEntry) -> tuple[int, int, str]:
    """token_embd, then block by block, then output: the same file whatever the shard layout."""
    parts = entry.gguf_name.split(".")
    if parts[0] == "blk":
        return (1, int(parts[1]), entry.gguf_name)
    return (0 if parts[0] == "token_embd" else 2, 0, entry.gguf_name)


def _tensor_type(shape: tuple[int, ...], gtype: GgufType) -> gguf.GGMLQuantizationType:
    """Norms stay F32 (as llama.cpp's converter keeps them); rows Q8_0 cannot block fall back to F16."""
    target = Q.F16 if gtype.tensor_type is None else gtype.tensor_type
    if len(shape) < 2:
        return Q.F32
    block, _ = gguf.GGML_QUANT_SIZES[target]
    return target if shape[-1] % block == 0 else Q.F16


def _check_complete(entries: list[PlanEntry], llm: LlmConfig) -> None:
    names = {e.gguf_name: e for e in entries}
    if len(names) != len(entries):
        raise CheckpointError("the checkpoint holds a Llama tensor twice (under two names)")
    expected = {"token_embd.weight", "output_norm.weight", "output.weight"}
    for bid in range(llm.num_hidden_layers):
        for part in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output"):
            expected.add(f"blk.{bid}.{part}.weight")
        for part in ("ffn_norm", "ffn_gate", "ffn_up", "ffn_down"):
            expected.add(f"blk.{bid}.{part}.weight")
    missing = sorted(expected - set(names))
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        raise CheckpointError(f"the checkpoint lacks Llama tensors (GGUF names): {shown}")
    embd = names["token_embd.weight"].shape
    if embd != (llm.vocab_size, llm.hidden_size):
        raise CheckpointError(
            f"model.embed_tokens.weight is {embd}, the config says ({llm.vocab_size}, {llm.hidden_size})"
        )


def permute_rows(block: np.ndarray, head_dim: int) -> np.ndarray:
    """HF q/k rows (per head: all first halves of the rotary pairs, then all second halves) ->
    llama.cpp's order (pairs adjacent). `block` holds whole heads."""
    rows, cols = block.shape
    return block.reshape(rows // head_dim, 2, head_dim // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def encode(block: np.ndarray, tensor_type: gguf.GGMLQuantizationType) -> np.ndarray:
    if tensor_type == Q.F32:
        return block
    if tensor_type == Q.F16:
        return block.astype(np.float16)
    return gguf.quants.quantize(block, tensor_type)


Reader = Callable[[SourceTensor, int, int], np.ndarray]


def convert_tensor(entry: PlanEntry, read: Reader = read_rows) -> np.ndarray:
    """The tensor's GGUF bytes (as an array), filled one row block at a time."""
    shape = entry.shape
    if len(shape) == 1:
        return encode(read(entry.source, 0, shape[0]), entry.tensor_type)
    rows, cols = shape
    step = max(1, BLOCK_BYTES // (4 * cols))
    head_dim = rows // entry.heads if entry.heads else 1
    step = max(head_dim, step // head_dim * head_dim)
    out = np.empty(entry.out_shape, dtype=entry.out_dtype)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        block = read(entry.source, start, stop)
        if entry.heads:
            block = permute_rows(block, head_dim)
        out[start:stop] = encode(block, entry.tensor_type)
    return out


def add_metadata(writer: gguf.GGUFWriter, llm: LlmConfig, gtype: GgufType, vocab: Vocab, name: str) -> None:
    writer.add_name(name)
    writer.add_context_length(llm.max_position_embeddings)
    writer.add_embedding_length(llm.hidden_size)
    writer.add_block_count(llm.num_hidden_layers)
    writer.add_feed_forward_length(llm.intermediate_size)
    writer.add_head_count(llm.num_attention_heads)
    writer.add_head_count_kv(llm.num_key_value_heads)
    writer.add_layer_norm_rms_eps(llm.rms_norm_eps)
    writer.add_rope_freq_base(llm.rope_theta)
    writer.add_rope_dimension_count(llm.head_dim)
    writer.add_vocab_size(llm.vocab_size)
    writer.add_file_type(int(gtype.file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_vocab(writer, vocab)


def write_gguf(
    path: Path,
    plan: Sequence[PlanEntry],
    llm: LlmConfig,
    gtype: GgufType,
    vocab: Vocab,
    name: str = "Video-Panda LLM",
    on_tensor: Callable[[int], None] | None = None,
    read: Reader = read_rows,
) -> None:
    """Header, metadata and tensor index first, then each tensor's data as soon as it is converted."""
    if len(vocab) != llm.vocab_size:
        raise CheckpointError(
            f"tokenizer.model has {len(vocab)} pieces but the model's vocabulary is {llm.vocab_size}"
        )
    writer = gguf.GGUFWriter(path, ARCH_NAME)
    try:
        add_metadata(writer, llm, gtype, vocab, name)
        for entry in plan:
            raw = entry.tensor_type if entry.out_dtype == np.uint8 else None
            writer.add_tensor_info(
                entry.gguf_name, entry.out_shape, entry.out_dtype, entry.nbytes, raw_dtype=raw
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for i, entry in enumerate(plan):
            writer.write_tensor_data(convert_tensor(entry, read))
            if on_tensor is not None:
                on_tensor(i + 1)
    finally:
        writer.close()
