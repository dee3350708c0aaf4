"""A LoRA adapter (`panda finetune`'s adapter/, PEFT layout) -> a llama.cpp LoRA GGUF.

What llama.cpp's `llama_adapter_lora_init` reads (and its convert_lora_to_gguf.py writes):
`general.architecture` the base's (llama), `general.type = adapter`, `adapter.type = lora`,
`adapter.lora.alpha`, and per adapted weight two tensors named after the base tensor,
`blk.N.attn_q.weight.lora_a` (PyTorch shape (rank, in), ggml ne [in, rank]) and `.lora_b` ((out,
rank), ne [rank, out]). Ours also holds `panda.base_checkpoint_sha256` (bundle.LORA_BASE_KEY), the
adapter's base checkpoint digest, which the runtime compares with the bundle's source weights.
llama.cpp scales B·A by alpha / rank itself. The q/k permutation the base's conversion applies to
rows (convert.permute_rows) applies to B's rows; A is untouched.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from panda_edge.bundle import LORA_BASE_KEY
from panda_edge.config import LlmConfig
from panda_edge.errors import PandaError
from panda_edge.export.llm_gguf.convert import permute_rows
from panda_edge.export.llm_gguf.names import ARCH, ARCH_NAME, PERMUTED
from panda_edge.fileio import atomic_path
from panda_edge.train.lora import PEFT_PREFIX, AdapterConfig, read_adapter

LORA_GGUF = "lora.gguf"


def lora_plan(adapter: str | Path, llm: LlmConfig) -> tuple[AdapterConfig, list[tuple[str, np.ndarray]]]:
    """(config, [(GGUF name, float32 array)]) for every A and B of the adapter, checked against `llm`."""
    config, state = read_adapter(adapter)
    names = gguf.TensorNameMap(ARCH, llm.num_hidden_layers)
    shapes = _base_shapes(llm)
    tensors: list[tuple[str, np.ndarray]] = []
    for key in sorted({k.rsplit(".lora_", 1)[0] for k in state}, key=_layer_order):
        base = key.removeprefix(PEFT_PREFIX) + ".weight"
        found = names.get_type_and_name(base, try_suffixes=(".weight",))
        if found is None:
            raise PandaError(f"{adapter}: cannot map adapted weight '{base}' to a llama GGUF tensor")
        kind, gguf_name = found
        a = state[f"{key}.lora_A.weight"].float().numpy()
        b = state[f"{key}.lora_B.weight"].float().numpy()
        rows, cols = shapes[kind]
        if a.shape[1] != cols or b.shape[0] != rows:
            raise PandaError(
                f"{adapter}: {base} is adapted as ({b.shape[0]}, {a.shape[1]}), the checkpoint's is "
                f"({rows}, {cols}): the adapter belongs to another model"
            )
        if kind in PERMUTED:
            b = permute_rows(b, rows // getattr(llm, PERMUTED[kind]))
        tensors += [(f"{gguf_name}.lora_a", np.ascontiguousarray(a)), (f"{gguf_name}.lora_b", b)]
    return config, tensors


def _base_shapes(llm: LlmConfig) -> dict[gguf.MODEL_TENSOR, tuple[int, int]]:
    """(out, in) of each adaptable Llama weight."""
    t, h, i = gguf.MODEL_TENSOR, llm.hidden_size, llm.intermediate_size
    kv = llm.num_key_value_heads * llm.head_dim
    return {
        t.ATTN_Q: (h, h),
        t.ATTN_K: (kv, h),
        t.ATTN_V: (kv, h),
        t.ATTN_OUT: (h, h),
        t.FFN_GATE: (i, h),
        t.FFN_UP: (i, h),
        t.FFN_DOWN: (h, i),
    }


def _layer_order(key: str) -> tuple[int, str]:
    parts = key.split(".")
    layer = next((int(p) for p in parts if p.isdigit()), -1)
    return layer, key


def write_lora_gguf(adapter: str | Path, path: Path, llm: LlmConfig, name: str = "Video-Panda LoRA") -> dict:
    """Write the adapter as a llama.cpp LoRA GGUF (float32 tensors: an adapter is small), atomically;
    returns what it wrote."""
    config, tensors = lora_plan(adapter, llm)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, ARCH_NAME)
        try:
            writer.add_name(name)
            writer.add_type(gguf.GGUFType.ADAPTER)
            writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
            writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config.lora_alpha))
            if config.base_checkpoint_sha256:  # the runtime checks it against the bundle's source
                writer.add_string(LORA_BASE_KEY, config.base_checkpoint_sha256)
            for tensor_name, data in tensors:
                writer.add_tensor(tensor_name, data)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return {
        "file": path.name,
        "rank": config.r,
        "alpha": config.lora_alpha,
        "tensors": len(tensors),
        "target_modules": list(config.target_modules),
        "base_checkpoint_sha256": config.base_checkpoint_sha256,
    }


def check_lora_base(checkpoint: str, adapter: str | Path) -> LlmConfig:
    """The base `checkpoint`'s Llama config, when it is the one the adapter was trained on (its weights'
    sha256): on other weights, or on the merged checkpoint `panda finetune` wrote, the update would be
    applied to the wrong base or twice. Called before anything is exported."""
    from panda_edge.config import read_config
    from panda_edge.model.checkpoint import weight_files
    from panda_edge.model.videopanda import resolve_checkpoint
    from panda_edge.train.lora import checkpoint_sha256

    directory = resolve_checkpoint(checkpoint)
    config, _ = read_adapter(adapter)
    base = checkpoint_sha256(weight_files(directory))
    if config.base_checkpoint_sha256 and config.base_checkpoint_sha256 != base:
        raise PandaError(
            f"--lora {adapter} was trained on other weights than --checkpoint {checkpoint} (base sha256 "
            f"{config.base_checkpoint_sha256[:12]}, these {base[:12]}); export its base checkpoint"
        )
    return read_config(directory).llm
