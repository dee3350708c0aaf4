"""The vision part alone (STAB + projector), for export, parity and benchmarks without the LLM.

Building `VideoPanda` builds the 7B Llama too; exporting or checking the 46.5M-parameter vision part
should not need it. `VisionTower.encode_frames` is `VideoPanda.encode_frames` itself, so its tokens
are the reference's by construction, and `from_checkpoint` reads only the vision weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from panda_edge.config import ModelConfig, read_config
from panda_edge.model.checkpoint import (
    ALIASES,
    VIDEO_PROJECTOR,
    VIDEO_TOWER,
    check_names,
    normalize_names,
    read_weight_file,
    weight_files,
)
from panda_edge.model.stab import STAB, build_projector
from panda_edge.model.videopanda import VideoPanda, resolve_checkpoint

VISION_PREFIXES = (VIDEO_TOWER, VIDEO_PROJECTOR, *ALIASES)


class VisionTower(nn.Module):
    """`stab` + `projector` + `config`: the attributes `VideoPanda.encode_frames` uses."""

    def __init__(self, config: ModelConfig, stab: STAB | None = None, projector: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.stab = stab if stab is not None else STAB(config.vision)
        self.projector = (
            projector
            if projector is not None
            else build_projector(config.projector_type, config.vision.width, config.llm.hidden_size)
        )

    encode_frames = VideoPanda.encode_frames

    @classmethod
    def from_model(cls, model: VideoPanda) -> VisionTower:
        """Shares the model's modules (no copy)."""
        return cls(model.config, model.stab, model.projector)

    @classmethod
    def from_checkpoint(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> VisionTower:
        """Load only `model.video_tower.*` and `model.video_projector.*` (or their aliases)."""
        directory = resolve_checkpoint(path)
        tower = cls(read_config(directory))
        state = normalize_names(read_vision_weights(directory)).state
        expected = {VIDEO_TOWER + k: v.shape for k, v in tower.stab.state_dict().items()}
        expected.update({VIDEO_PROJECTOR + k: v.shape for k, v in tower.projector.state_dict().items()})
        check_names(expected, state)
        with torch.no_grad():
            for prefix, module in ((VIDEO_TOWER, tower.stab), (VIDEO_PROJECTOR, tower.projector)):
                sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
                module.load_state_dict(sub, strict=True)
        return tower.to(dtype).eval()

    @classmethod
    def random(cls, config: ModelConfig, seed: int = 0) -> VisionTower:
        """Every weight random (fan-in scaled), including the official zero-inits, which hide bugs."""
        torch.manual_seed(seed)
        tower = cls(config)
        with torch.no_grad():
            for p in tower.parameters():
                p.normal_(0, p[0].numel() ** -0.5 if p.ndim > 1 else 0.5)
            for name, b in tower.named_buffers():
                if name.endswith("running_mean"):
                    b.normal_(0, 0.2)
                elif name.endswith("running_var"):
                    b.uniform_(0.5, 1.5)
        return tower.eval()


def read_vision_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The vision tensors of a checkpoint; safetensors files are read lazily, name by name."""
    from safetensors import SafetensorError, safe_open

    from panda_edge.errors import CheckpointError

    state: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        if path.suffix != ".safetensors":
            state.update({k: v for k, v in read_weight_file(path).items() if k.startswith(VISION_PREFIXES)})
            continue
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    if name.startswith(VISION_PREFIXES):
                        state[name] = f.get_tensor(name)
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: cannot read weights ({exc})") from None
    return state
