"""The memory plan: what Video-Panda needs on a device, whether it fits, and its decode ceiling.

Per GGUF type: LLM weights (by ggml type), the KV cache llama.cpp allocates for the whole context,
llama.cpp's compute buffer, the vision engine's weights and activations, the CUDA / TensorRT /
cuBLAS runtime and (unified memory) the host process, and the device's reserve. Decode is bound by
memory bandwidth: each new token reads every weight once (the token embedding only one row) plus
the KV cache written so far, so bandwidth / those bytes is a ceiling no implementation passes.

The runtime figures are estimates (named constants below); measure a device with `tegrastats`
(Jetson) or `nvidia-smi` and pass `--reserve-gib` to correct the reserve.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from panda_edge.backends import (
    CPU_BACKEND,
    DEFAULT_KV_CACHE,
    DEFAULT_N_CTX,
    PLANNED_GGUF_TYPES,
    RECOMMENDED_GGUF_TYPES,
    TRT,
    check_gguf_type,
    check_kv_cache,
    check_precision,
    default_n_ctx,
    default_precision,
)
from panda_edge.bundle import Manifest
from panda_edge.errors import PandaError
from panda_edge.plan.devices import Device
from panda_edge.plan.ggml import kv_cache_bytes, weight_plan
from panda_edge.plan.vision import (
    activation_bytes,
    engine_weight_bytes,
    vision_parameters,
    visual_tokens_per_video,
)

GIB = 1 << 30
CUDA_RUNTIME_BYTES = int(0.6 * GIB)  # CUDA context, cuBLAS (llama.cpp), TensorRT runtime: estimate
HOST_PROCESS_BYTES = int(0.4 * GIB)  # Python, numpy, PyAV, decoded frames: in unified memory only
N_UBATCH = 512  # llama.cpp's default micro-batch: rows in one compute pass
PROMPT_TEXT_TOKENS = 64  # system prompt + question around the visual tokens
ANSWER_TOKENS = 256
CONTEXT_STEP = 256


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a model: its config dicts, and a bundle's measured files if any."""

    source: str
    llm: dict[str, Any]
    vision: dict[str, Any]
    projector_type: str
    gguf_files: dict[str, int] = field(default_factory=dict)  # gguf type -> file bytes
    engine_memory: dict[str, int] = field(default_factory=dict)  # precision -> device_memory_bytes

    @classmethod
    def from_config(cls, config: dict[str, Any], source: str) -> ModelShape:
        return cls(source, config["llm"], config["vision"], config.get("projector_type", "mlp2x_gelu"))

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> ModelShape:
        config = manifest.config
        return cls(
            str(manifest.root),
            asdict(config.llm),
            asdict(config.vision),
            config.projector_type,
            {t: manifest.files[g.file].size for t, g in manifest.ggufs.items()},
            {
                e.precision: int(e.device_memory_bytes)
                for e in manifest.engines.values()
                if e.device_memory_bytes
            },
        )


@dataclass(frozen=True)
class Option:
    """One GGUF type on the device."""

    gguf_type: str
    parts: dict[str, int]  # what takes memory, bytes
    weights: dict[str, Any]
    weights_measured: bool  # the bundle's GGUF file size, not the computed tensor bytes
    available: int
    fits: bool
    max_context: int  # the largest context (a multiple of 256) that fits; 0 when none does
    bytes_per_token: int
    decode_tok_s: float  # ceiling at the first answer token
    decode_tok_s_empty: float  # ceiling with an empty KV cache (weights only)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "gguf_type": self.gguf_type,
            "parts_bytes": dict(self.parts),
            "total_bytes": self.total,
            "available_bytes": self.available,
            "headroom_bytes": self.available - self.total,
            "fits": self.fits,
            "max_context": self.max_context,
            "weights": self.weights,
            "weights_measured": self.weights_measured,
            "bytes_read_per_token": self.bytes_per_token,
            "decode_tok_s_ceiling": round(self.decode_tok_s, 2),
            "decode_tok_s_ceiling_empty_cache": round(self.decode_tok_s_empty, 2),
        }


@dataclass(frozen=True)
class Plan:
    device: Device
    model: ModelShape
    context: int
    kv_type: str
    vision_precision: str
    needed_context: int
    decode_position: int
    options: list[Option]
    recommended: str | None
    recommended_context: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device.to_dict(),
            "model": {
                "source": self.model.source,
                "llm": {
                    k: self.model.llm[k]
                    for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")
                },
                "visual_tokens_per_video": visual_tokens_per_video(self.model.vision),
            },
            "context": self.context,
            "kv_type": self.kv_type,
            "vision_precision": self.vision_precision,
            "needed_context": self.needed_context,
            "context_holds_a_video": self.context >= self.needed_context,
            "vision_activations_measured": self.vision_precision in self.model.engine_memory,
            "decode_position": self.decode_position,
            "options": [o.to_dict() for o in self.options],
            "recommended": self.recommended,
            "recommended_context": self.recommended_context,
        }


def compute_buffer_bytes(llm: dict[str, Any], context: int, n_ubatch: int = N_UBATCH) -> int:
    """llama.cpp's compute buffer for one micro-batch, float32: attention scores (heads x ubatch x
    context, without flash attention), the FFN's two intermediate rows and four hidden-state rows."""
    per_row = llm["num_attention_heads"] * context + 2 * llm["intermediate_size"] + 4 * llm["hidden_size"]
    return 4 * n_ubatch * per_row


def model_shape(bundle: str | Path | None = None, preset_name: str | None = None) -> ModelShape:
    """The shape to plan: a bundle's (its config and GGUF files, hashes not checked) or a preset's."""
    if (bundle is None) == (preset_name is None):
        raise PandaError("give one of --bundle BUNDLE or --preset full|tiny")
    if bundle is not None:
        return ModelShape.from_manifest(Manifest.load(bundle, verify=False))
    from panda_edge.config import preset

    return ModelShape.from_config(asdict(preset(preset_name)), f"preset:{preset_name}")


def plan_memory(
    model: ModelShape,
    device: Device,
    context: int | None = None,
    kv_type: str = DEFAULT_KV_CACHE,
    vision_precision: str | None = None,
    gguf_types: tuple[str, ...] | None = None,
) -> Plan:
    """`model` on `device`: memory per part for each GGUF type, whether it fits, the decode ceiling.
    `vision_precision` defaults to fp16 (TensorRT), fp32 on the cpu device (ONNX Runtime)."""
    backend = CPU_BACKEND if device.name == "cpu" else TRT  # what runs the vision part there
    vision_precision = check_precision(backend, vision_precision or default_precision(backend))
    if context is None:  # what panda run allocates
        context = default_n_ctx(model.llm.get("max_position_embeddings", DEFAULT_N_CTX))
    if context < 1:
        raise PandaError(f"--n-ctx must be positive, not {context}")
    check_kv_cache(kv_type)
    types = gguf_types or tuple(dict.fromkeys((*PLANNED_GGUF_TYPES, *model.gguf_files)))
    for t in types:
        check_gguf_type(t)
    llm, vision = model.llm, model.vision
    hidden = llm["hidden_size"]
    params = vision_parameters(vision, model.projector_type, hidden)
    visual = visual_tokens_per_video(vision)
    needed = visual + PROMPT_TEXT_TOKENS + ANSWER_TOKENS
    position = min(context, visual + PROMPT_TEXT_TOKENS)
    on_cpu = device.name == "cpu"  # ONNX Runtime and llama.cpp on this machine's CPU: no CUDA
    fixed = {
        "vision_engine": engine_weight_bytes(params, vision_precision),
        "vision_activations": (0 if on_cpu else model.engine_memory.get(vision_precision))
        or activation_bytes(vision, hidden, vision_precision),
        **({} if on_cpu else {"cuda_runtime": CUDA_RUNTIME_BYTES}),
        **({"host_process": HOST_PROCESS_BYTES} if device.unified else {}),
    }
    available = int(device.memory_gib * GIB) - int(device.reserve_gib * GIB)
    options = [_option(t, model, device, context, kv_type, fixed, available, position) for t in types]
    recommended, recommended_context = _recommend(options, context, needed)
    return Plan(
        device,
        model,
        context,
        kv_type,
        vision_precision,
        needed,
        position,
        options,
        recommended,
        recommended_context,
    )


def _option(
    gguf_type: str,
    model: ModelShape,
    device: Device,
    context: int,
    kv_type: str,
    fixed: dict[str, int],
    available: int,
    position: int,
) -> Option:
    llm = model.llm
    weights = weight_plan(llm, gguf_type)
    measured = gguf_type in model.gguf_files
    weight_bytes = model.gguf_files[gguf_type] if measured else weights.total
    parts = {
        "llm_weights": weight_bytes,
        "kv_cache": kv_cache_bytes(llm, context, kv_type),
        "llm_compute": compute_buffer_bytes(llm, context),
        **fixed,
    }
    total = sum(parts.values())
    # Everything but the KV cache and the compute buffer is fixed; both grow linearly with context.
    per_position = kv_cache_bytes(llm, 1, kv_type) + 4 * N_UBATCH * llm["num_attention_heads"]
    room = available - (total - parts["kv_cache"] - parts["llm_compute"]) - compute_buffer_bytes(llm, 0)
    limit = llm.get("max_position_embeddings") or context
    max_context = max(0, min(limit, room // per_position) // CONTEXT_STEP * CONTEXT_STEP)
    read = weight_bytes - weights.token_embd_bytes
    bandwidth = device.bandwidth_gb_s * 1e9
    per_token = read + kv_cache_bytes(llm, position, kv_type)
    return Option(
        gguf_type=gguf_type,
        parts=parts,
        weights=weights.to_dict(),
        weights_measured=measured,
        available=available,
        fits=total <= available,
        max_context=max_context,
        bytes_per_token=per_token,
        decode_tok_s=bandwidth / per_token,
        decode_tok_s_empty=bandwidth / read,
    )


def _recommend(options: list[Option], context: int, needed: int) -> tuple[str | None, int | None]:
    """The best-quality type that fits the asked context, else the one that fits the most context."""
    by_type = {o.gguf_type: o for o in options}
    ranked = [by_type[t] for t in RECOMMENDED_GGUF_TYPES if t in by_type] or options
    for option in ranked:
        if option.fits:
            return option.gguf_type, context
    for option in ranked:
        if option.max_context >= needed:
            return option.gguf_type, option.max_context
    return None, None
