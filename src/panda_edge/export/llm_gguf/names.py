"""Panda-specific data for the Llama -> GGUF conversion: which checkpoint names to skip, which to
permute, and each `--gguf-type` in gguf-py's terms. Data only; the GGUF names themselves come from
`gguf.TensorNameMap` (llama architecture), so supporting a new name is a row here, not code.
"""

from __future__ import annotations

from dataclasses import dataclass

import gguf

from panda_edge import backends

ARCH = gguf.MODEL_ARCH.LLAMA
ARCH_NAME = gguf.MODEL_ARCH_NAMES[ARCH]

# Checkpoint names that are not part of the Llama backbone: the vision side (and its aliases),
# training-only modules, and buffers transformers recomputes.
SKIP_PREFIXES: tuple[str, ...] = (
    "model.video_tower.",
    "model.vision_tower.",
    "model.video_projector.",
    "model.mm_projector.",
    "model.video_tower_compressor.",
    "model.video_teacher.",
    "model.vision_tower_compressor.",
    "model.image_teacher.",
)
SKIP_SUFFIXES: tuple[str, ...] = (".rotary_emb.inv_freq",)

# HF stores q/k rows as [first halves of every head pair | second halves] (rotate_half); llama.cpp's
# RoPE rotates adjacent pairs, so these rows are reordered per head. Value: the config field that
# holds the head count for that tensor.
PERMUTED: dict[gguf.MODEL_TENSOR, str] = {
    gguf.MODEL_TENSOR.ATTN_Q: "num_attention_heads",
    gguf.MODEL_TENSOR.ATTN_K: "num_key_value_heads",
}


@dataclass(frozen=True)
class GgufType:
    """One `--gguf-type`: how 2-D weights are stored, and who quantizes them."""

    name: str
    file_type: int  # general.file_type (llama_ftype)
    tensor_type: gguf.GGMLQuantizationType | None  # what gguf-py writes for 2-D weights
    llama_ftype: str | None = None  # llama.cpp quantizer constant (K-quants), applied to an f16 file


Q = gguf.GGMLQuantizationType
F = gguf.LlamaFileType
# Each `--gguf-type` of panda_edge.backends.GGUF_TYPES, in gguf-py's terms.
GGUF_TYPES: dict[str, GgufType] = {
    t.name: GgufType(t.name, F[t.file_type], None if t.kquant else Q[t.weights], t.llama_ftype)
    for t in backends.GGUF_TYPES.values()
}


def gguf_file_name(type_name: str) -> str:
    return f"llm.{type_name}.gguf"
