"""Parameter and visual-token counts of a configuration, built on the meta device (no weights)."""

from __future__ import annotations

from typing import Any

import torch

from panda_edge.config import ModelConfig, preset, read_config
from panda_edge.video.preprocess import visual_tokens


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(config: ModelConfig) -> dict[str, int]:
    from panda_edge.model.videopanda import VideoPanda

    with torch.device("meta"):
        model = VideoPanda(config)
    stab, projector, llm = count(model.stab), count(model.projector), count(model.llm)
    unused = count(model.stab.lmhra2)
    return {
        "stab": stab,
        "stab_without_lmhra2": stab - unused,
        "projector": projector,
        "vision": stab + projector,
        "vision_without_lmhra2": stab - unused + projector,
        "llm": llm,
        "total": stab + projector + llm,
    }


def describe(
    checkpoint: str | None = None,
    preset_name: str | None = None,
    size: tuple[int, int] | None = None,
    real_frames: int | None = None,
) -> dict[str, Any]:
    if checkpoint is not None:
        from panda_edge.model.videopanda import resolve_checkpoint

        directory = resolve_checkpoint(checkpoint)
        config, source = read_config(directory), str(directory)
    else:
        config, source = preset(preset_name or "full"), f"preset:{preset_name}"
    v = config.vision
    width, height = size or (v.image_size, v.image_size)
    real = v.video_frames if real_frames is None else min(real_frames, v.video_frames)
    tokens = visual_tokens(width, height, v, real)
    return {
        "source": source,
        "config": config.to_dict(),
        "parameters": parameter_counts(config),
        "visual_tokens": {
            "width": width,
            "height": height,
            "frames": v.video_frames,
            "real_frames": real,
            **tokens,
        },
    }
