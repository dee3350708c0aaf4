"""A random-weight checkpoint in the released Video-Panda layout, for rehearsals at scale.

Official key names, float16 safetensors shards named by `model.safetensors.index.json`,
`torch_dtype: float16` in `config.json`, and, for the full configuration, the official tower name
without a preprocessor config (what a download carries). Written shard by shard: at most one shard
is in memory, so a 13.5 GB 7B checkpoint needs about 3.5 GB.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from panda_edge.config import OFFICIAL_VIDEO_TOWER, ModelConfig

RELEASE_SHARDS = 4


def write_release_checkpoint(
    directory: Path, config: ModelConfig, shards: int = RELEASE_SHARDS, seed: int = 0
) -> dict[str, Any]:
    """Random weights (normal with std 0.02 for the Llama's matrices, ones for its norms; STAB and
    projector as `VisionTower.random`), stored as float16; returns the bytes and shard count."""
    import torch
    from safetensors.torch import save_file

    from panda_edge.bench.llm import synthetic_tokenizer
    from panda_edge.config import official_config_dict, preprocessor_dict
    from panda_edge.fileio import write_json
    from panda_edge.model.checkpoint import SAFE_INDEX, VIDEO_PROJECTOR, VIDEO_TOWER
    from panda_edge.model.loading import build_on_meta
    from panda_edge.model.videopanda import VideoPanda
    from panda_edge.model.vision import VisionTower

    directory.mkdir(parents=True, exist_ok=True)
    synthetic_tokenizer(directory / "tokenizer.model", config.llm.vocab_size)
    tower = VisionTower.random(config, seed)
    tensors: dict[str, Any] = {VIDEO_TOWER + k: v for k, v in tower.stab.state_dict().items()}
    tensors.update({VIDEO_PROJECTOR + k: v for k, v in tower.projector.state_dict().items()})
    llm_shapes = build_on_meta(lambda: VideoPanda(config)).llm.state_dict()
    generator = torch.Generator().manual_seed(seed)

    def make(name: str) -> torch.Tensor:
        if name in tensors:
            t = tensors[name]
            return t.to(torch.float16) if t.is_floating_point() else t
        shape = llm_shapes[name].shape
        if len(shape) == 1:
            return torch.ones(shape, dtype=torch.float16)
        return (torch.randn(shape, generator=generator) * 0.02).to(torch.float16)

    names = [*tensors, *llm_shapes]
    sizes = {n: (tensors[n] if n in tensors else llm_shapes[n]).numel() * 2 for n in names}
    total = sum(sizes.values())
    per_shard = total / shards
    groups: list[list[str]] = [[]]
    size = 0
    for name in names:
        if groups[-1] and size + sizes[name] > per_shard and len(groups) < shards:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += sizes[name]
    weight_map = {}
    for i, group in enumerate(groups, start=1):
        file = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        tmp = directory / f".{file}.tmp"
        save_file({n: make(n) for n in group}, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, directory / file)
        weight_map.update(dict.fromkeys(group, file))
    write_json(directory / SAFE_INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map})
    official = official_config_dict(config)
    official["torch_dtype"] = "float16"
    official.pop("_panda_preset", None)
    if config.video_tower == OFFICIAL_VIDEO_TOWER:
        (directory / "preprocessor_config.json").unlink(missing_ok=True)
    else:
        write_json(directory / "preprocessor_config.json", preprocessor_dict(config.vision))
    write_json(directory / "config.json", official)
    return {"bytes": total, "shards": len(groups)}
