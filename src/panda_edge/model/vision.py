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
from panda_edge.model.checkpoint import VIDEO_PROJECTOR, VIDEO_TOWER
from panda_edge.model.loading import ReferencePrecision, build_on_meta, load_reference, working_bytes
from panda_edge.model.stab import STAB, build_projector
from panda_edge.model.videopanda import VideoPanda, resolve_checkpoint


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
    def from_checkpoint(cls, path: str | Path, precision: ReferencePrecision | None = None) -> VisionTower:
        """Load only `model.video_tower.*` and `model.video_projector.*` (or their aliases)."""
        precision = precision or ReferencePrecision()
        directory = resolve_checkpoint(path)
        config = read_config(directory)
        tower = build_on_meta(lambda: cls(config))
        parts = {VIDEO_TOWER: tower.stab, VIDEO_PROJECTOR: tower.projector}
        working = working_bytes(config, precision, 0, vision=True, llm=False)
        load_reference(parts, directory, precision, "the vision reference", working)
        return tower.eval()

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
