"""STAB parity over videos: one reference and one candidate engine, per video and overall (no torch).

The engines are any two vision backends (`runtime/vision`), active; the PyTorch reference is just
another one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from panda_edge.config import VisionConfig
from panda_edge.parity.compare import LEVELS, OutputParity, combine, compare_tokens
from panda_edge.runtime.vision.base import VisionBackend


@dataclass(frozen=True)
class StabParity:
    level: str
    overall: OutputParity
    videos: tuple[OutputParity, ...]

    @property
    def passed(self) -> bool:
        return self.overall.passed and all(self.videos)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        """{level: {cosine_min, max_abs_rel, passed, videos: [...]}} as `panda parity --json` writes it."""
        overall = self.overall.to_dict()
        return {
            self.level: {
                "cosine_min": overall["cosine_min"],
                "max_abs_rel": overall["max_abs_rel"],
                "passed": self.passed,
                "videos": [_video_entry(v) for v in self.videos],
            }
        }


def _video_entry(result: OutputParity) -> dict[str, Any]:
    entry = result.to_dict()
    return {"video": entry.pop("name"), **entry}


def stab_parity(
    reference: VisionBackend,
    candidate: VisionBackend,
    videos: Sequence[str | Path],
    vision: VisionConfig,
    level: str = "stab_fp32",
    on_video: Callable[[int], None] | None = None,
) -> StabParity:
    """Decode and pre-process each video once, then compare both engines' per-frame tokens."""
    from panda_edge.video import load_video

    thresholds = LEVELS[level]
    results = []
    for i, video in enumerate(videos):
        frames = load_video(video, vision)
        results.append(
            compare_tokens(reference.encode(frames), candidate.encode(frames), str(video), thresholds)
        )
        if on_video is not None:
            on_video(i + 1)
    return StabParity(level, combine("all videos", results), tuple(results))
