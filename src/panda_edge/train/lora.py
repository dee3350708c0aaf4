"""LoRA (Hu et al. 2021) on the Llama's attention and MLP projections, small enough to own.

A wrapped Linear computes `base(x) + scale * B(A(x))` with `scale = alpha / rank`: the base keeps
its stored 16 bits and stays frozen, A (rank x in) and B (out x rank) are float32 and train; B starts
at zero, so the wrapped model starts as the base. Merging adds `scale * B @ A` to the base weight in
float32 and stores it back in the base's dtype: the merged checkpoint is the released layout.

The adapter alone is written the way Hugging Face PEFT writes one (`adapter_model.safetensors`, keys
`base_model.model.<module>.lora_A.weight` / `.lora_B.weight`, and `adapter_config.json` with `r`,
`lora_alpha`, `target_modules`), plus the sha256 of the base checkpoint's weight files: PEFT and
llama.cpp's convert_lora_to_gguf.py read it, and `panda export --target gguf --lora` turns it into
a llama.cpp LoRA GGUF.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn import functional as F

from panda_edge.errors import PandaError
from panda_edge.fileio import atomic_path, write_json

# transformers' Llama module names: the four attention projections and the three of the MLP
TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."


class LoraLinear(nn.Module):
    """A frozen Linear plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.rank, self.alpha = rank, alpha
        device = base.weight.device
        a = torch.empty(rank, base.in_features, dtype=torch.float32)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)  # PEFT's default for A
        self.lora_A = nn.Parameter(a.to(device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=torch.float32, device=device))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)
        update = F.linear(F.linear(x.to(self.lora_A.dtype), self.lora_A), self.lora_B) * self.scale
        return y + update.to(y.dtype)

    def delta(self) -> Tensor:
        """The update to the base weight, float32: scale * B @ A."""
        return (self.lora_B @ self.lora_A) * self.scale

    def merged(self) -> nn.Linear:
        """The base Linear with the update added, in the base weight's dtype."""
        with torch.no_grad():
            weight = self.base.weight
            weight.copy_((weight.float() + self.delta().to(weight.device)).to(weight.dtype))
        return self.base


@dataclass(frozen=True)
class AdapterConfig:
    """adapter_config.json: PEFT's keys, and the base checkpoint it was trained on."""

    r: int
    lora_alpha: float
    target_modules: tuple[str, ...]
    base_checkpoint_sha256: str  # over the base's weight files (`checkpoint_sha256`)
    base_model_name_or_path: str = ""
    peft_type: str = "LORA"
    task_type: str = "CAUSAL_LM"
    lora_dropout: float = 0.0
    bias: str = "none"

    def to_dict(self) -> dict:
        return {**asdict(self), "target_modules": list(self.target_modules)}


def wrap(llm: nn.Module, rank: int, alpha: float, targets: Sequence[str] = TARGETS, seed: int = 0) -> int:
    """Wrap every Linear of `llm` whose name ends in one of `targets`; returns how many. The base's
    other weights are frozen."""
    if rank < 1:
        raise PandaError(f"--rank must be at least 1, got {rank}")
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        raise PandaError(f"unknown LoRA target {', '.join(unknown)}; choose from: {', '.join(TARGETS)}")
    llm.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    found = [
        (name, module)
        for name, module in llm.named_modules()
        if isinstance(module, nn.Linear) and name.rpartition(".")[2] in targets
    ]
    for name, module in found:
        parent, _, leaf = name.rpartition(".")
        setattr(llm.get_submodule(parent), leaf, LoraLinear(module, rank, alpha, generator))
    return len(found)


def wrapped(llm: nn.Module) -> dict[str, LoraLinear]:
    return {name: m for name, m in llm.named_modules() if isinstance(m, LoraLinear)}


def merge(llm: nn.Module) -> None:
    """Fold every LoRA update into its base weight and put the plain Linear back."""
    for name, module in wrapped(llm).items():
        parent, _, leaf = name.rpartition(".")
        setattr(llm.get_submodule(parent), leaf, module.merged())


def adapter_state_dict(llm: nn.Module) -> dict[str, Tensor]:
    """PEFT's names: base_model.model.<module>.lora_A.weight (rank, in) / .lora_B.weight (out, rank)."""
    state = {}
    for name, module in wrapped(llm).items():
        state[f"{PEFT_PREFIX}{name}.lora_A.weight"] = module.lora_A.detach().float().cpu().contiguous()
        state[f"{PEFT_PREFIX}{name}.lora_B.weight"] = module.lora_B.detach().float().cpu().contiguous()
    return state


def load_adapter_state(llm: nn.Module, state: dict[str, Tensor]) -> None:
    """Put saved A and B into the wrapped modules of `llm` (same rank and targets)."""
    modules = wrapped(llm)
    with torch.no_grad():
        for name, module in modules.items():
            module.lora_A.copy_(state[f"{PEFT_PREFIX}{name}.lora_A.weight"])
            module.lora_B.copy_(state[f"{PEFT_PREFIX}{name}.lora_B.weight"])


def save_adapter(directory: Path, llm: nn.Module, config: AdapterConfig) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / ADAPTER_WEIGHTS) as tmp:
        save_file(adapter_state_dict(llm), str(tmp), metadata={"format": "pt"})
    write_json(directory / ADAPTER_CONFIG, config.to_dict())


def read_adapter(directory: str | Path) -> tuple[AdapterConfig, dict[str, Tensor]]:
    """An adapter directory (or its adapter_config.json / adapter_model.safetensors): its config and
    tensors, checked to pair up A with B at one rank."""
    path = Path(directory)
    if path.is_file():
        path = path.parent
    try:
        data = json.loads((path / ADAPTER_CONFIG).read_text())
        config = AdapterConfig(
            r=int(data["r"]),
            lora_alpha=float(data["lora_alpha"]),
            target_modules=tuple(data["target_modules"]),
            base_checkpoint_sha256=str(data.get("base_checkpoint_sha256", "")),
            base_model_name_or_path=str(data.get("base_model_name_or_path", "")),
        )
        state = load_file(str(path / ADAPTER_WEIGHTS))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PandaError(f"{directory}: not a LoRA adapter directory ({exc})") from None
    pairs = {k.removesuffix(".lora_A.weight") for k in state if k.endswith(".lora_A.weight")}
    if not pairs or pairs != {
        k.removesuffix(".lora_B.weight") for k in state if k.endswith(".lora_B.weight")
    }:
        raise PandaError(f"{directory}: the adapter's lora_A and lora_B tensors do not pair up")
    for key in pairs:
        a, b = state[key + ".lora_A.weight"], state[key + ".lora_B.weight"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != config.r or b.shape[1] != config.r:
            raise PandaError(
                f"{directory}: {key} has A {tuple(a.shape)} and B {tuple(b.shape)}, not rank {config.r}"
            )
    return config, state


def checkpoint_sha256(weight_files: Sequence[Path]) -> str:
    """One digest for a checkpoint's weights (`bundle.checkpoint_digest`, in the index's order)."""
    from panda_edge.bundle import checkpoint_digest, sha256_file

    return checkpoint_digest((path.name, sha256_file(path)) for path in weight_files)
