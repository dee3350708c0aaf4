"""Bytes of a Llama backbone as GGUF, tensor by tensor, for each `--gguf-type` (no gguf package).

Block sizes are ggml's (weights per block, bytes per block; the same numbers as gguf-py's
GGML_QUANT_SIZES). Which type each tensor gets follows the writers:
- f32 / f16 / bf16 / q8_0 (our gguf-py converter): 2-D weights in the type, 1-D norms F32; a row
  Q8_0 cannot block falls back to F16;
- q4_k_m / q5_k_m (llama.cpp's `llama_tensor_get_type`): Q4_K / Q5_K, with Q6_K for `output` and
  for `attn_v` and `ffn_down` in the layers `use_more_bits` picks (the first and last eighth, and
  every third layer between); a row that is not a multiple of 256 falls back (Q4_K -> Q5_0,
  Q5_K -> Q5_1, Q6_K -> Q8_0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from panda_edge.backends import DEFAULT_KV_CACHE, check_gguf_type, check_kv_cache
from panda_edge.errors import PandaError

# ggml type -> (weights per block, bytes per block)
BLOCKS: dict[str, tuple[int, int]] = {
    "F32": (1, 4),
    "F16": (1, 2),
    "BF16": (1, 2),
    "Q8_0": (32, 34),
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q5_0": (32, 22),
    "Q5_1": (32, 24),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
}
QK_K = 256
_KQUANT_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def tensor_bytes(ggml_type: str, n_weights: int) -> int:
    block, size = BLOCKS[ggml_type]
    if n_weights % block:
        raise PandaError(f"{n_weights} weights do not fill whole {ggml_type} blocks of {block}")
    return n_weights // block * size


@dataclass(frozen=True)
class LlamaTensor:
    name: str  # GGUF name, e.g. blk.3.attn_v.weight
    shape: tuple[int, ...]  # (rows, row length) for weights, (n,) for norms
    layer: int | None = None

    @property
    def weights(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def row(self) -> int:
        """ggml's ne[0]: the length the block size must divide."""
        return self.shape[-1]


def llama_tensors(llm: dict[str, Any]) -> list[LlamaTensor]:
    """Every tensor of a Llama GGUF, from a LlmConfig's fields (hidden_size, num_hidden_layers, ...)."""
    hidden, ff, vocab = llm["hidden_size"], llm["intermediate_size"], llm["vocab_size"]
    heads = llm["num_attention_heads"]
    kv = llm.get("num_key_value_heads") or heads
    kv_width = kv * (hidden // heads)
    tensors = [
        LlamaTensor("token_embd.weight", (vocab, hidden)),
        LlamaTensor("output_norm.weight", (hidden,)),
        LlamaTensor("output.weight", (vocab, hidden)),
    ]
    for i in range(llm["num_hidden_layers"]):
        for name, shape in (
            ("attn_norm", (hidden,)),
            ("attn_q", (hidden, hidden)),
            ("attn_k", (kv_width, hidden)),
            ("attn_v", (kv_width, hidden)),
            ("attn_output", (hidden, hidden)),
            ("ffn_norm", (hidden,)),
            ("ffn_gate", (ff, hidden)),
            ("ffn_up", (ff, hidden)),
            ("ffn_down", (hidden, ff)),
        ):
            tensors.append(LlamaTensor(f"blk.{i}.{name}.weight", shape, i))
    return tensors


def use_more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's choice of the layers whose attn_v / ffn_down get Q6_K in the _M mixes."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def tensor_type(gguf_type: str, tensor: LlamaTensor, layers: int) -> str:
    """The ggml type `gguf_type` stores `tensor` in."""
    gtype = check_gguf_type(gguf_type)
    if len(tensor.shape) < 2:
        return "F32"
    target = gtype.weights
    if not gtype.kquant:
        return target if tensor.row % BLOCKS[target][0] == 0 else "F16"
    if tensor.name == "output.weight" or (
        tensor.layer is not None
        and tensor.name.endswith(("attn_v.weight", "ffn_down.weight"))
        and use_more_bits(tensor.layer, layers)
    ):
        target = "Q6_K"
    if tensor.row % QK_K:
        target = _KQUANT_FALLBACK[target]
    return target


@dataclass(frozen=True)
class WeightPlan:
    gguf_type: str
    by_type: dict[str, int]  # ggml type -> bytes
    tensors_by_type: dict[str, int]  # ggml type -> tensor count
    token_embd_bytes: int  # read one row per token, not all of it

    @property
    def total(self) -> int:
        return sum(self.by_type.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "gguf_type": self.gguf_type,
            "bytes": self.total,
            "by_type": dict(self.by_type),
            "tensors_by_type": dict(self.tensors_by_type),
            "token_embd_bytes": self.token_embd_bytes,
        }


def weight_plan(llm: dict[str, Any], gguf_type: str) -> WeightPlan:
    layers = llm["num_hidden_layers"]
    by_type: dict[str, int] = {}
    counts: dict[str, int] = {}
    embd = 0
    for tensor in llama_tensors(llm):
        kind = tensor_type(gguf_type, tensor, layers)
        size = tensor_bytes(kind, tensor.weights)
        by_type[kind] = by_type.get(kind, 0) + size
        counts[kind] = counts.get(kind, 0) + 1
        if tensor.name == "token_embd.weight":
            embd = size
    order = sorted(by_type, key=lambda k: -by_type[k])
    return WeightPlan(gguf_type, {k: by_type[k] for k in order}, {k: counts[k] for k in order}, embd)


def kv_cache_bytes(llm: dict[str, Any], context: int, kv_type: str = DEFAULT_KV_CACHE) -> int:
    """K and V for `context` positions: 2 x layers x context x kv_heads x head_dim elements."""
    heads = llm["num_attention_heads"]
    kv = llm.get("num_key_value_heads") or heads
    per_position = kv * (llm["hidden_size"] // heads)
    element = check_kv_cache(kv_type).ggml_type
    return 2 * llm["num_hidden_layers"] * context * tensor_bytes(element, per_position)
