"""Calibration data: which videos, pre-processed exactly as inference does, stored in the bundle.

The frames go into `calibration.npz` (the tensors themselves, not just the video names), so a
calibration can be repeated or redone on the device from the bundle alone, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from panda_edge.config import VisionConfig
from panda_edge.errors import PandaError
from panda_edge.fileio import atomic_path

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


def videos_in(directory: str | Path) -> list[Path]:
    """The video files directly inside `directory`, sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PandaError(f"{directory}: no such directory of videos")
    found = sorted(p for p in directory.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not found:
        raise PandaError(f"{directory}: no video files ({', '.join(VIDEO_SUFFIXES)})")
    return found


def videos_of_qa(qa: str | Path, videos_dir: str | Path | None = None) -> list[Path]:
    """The distinct videos a QA file names, in order; looked up in `videos_dir`, else next to the QA
    file or in its `videos/` folder (the toy world's layout)."""
    from panda_edge.parity.task import read_questions

    qa = Path(qa)
    if not qa.is_file():
        raise PandaError(f"{qa}: no such QA file")
    names = list(dict.fromkeys(q.video for q in read_questions(qa)))
    if not names:
        raise PandaError(f"{qa}: the QA file names no videos")
    bases = [Path(videos_dir)] if videos_dir is not None else [qa.parent / "videos", qa.parent]
    for base in bases:
        paths = [base / name for name in names]
        if all(p.is_file() for p in paths):
            return paths
    where = " or ".join(str(b) for b in bases)
    missing = next(name for name in names if not any((b / name).is_file() for b in bases))
    raise PandaError(f"{qa}: video '{missing}' is not in {where}; pass --videos DIR")


def spread(items: Sequence, n: int) -> list:
    """`n` items spread evenly over `items` (every part of a sorted list, not just its start)."""
    if n >= len(items):
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def split_videos(videos: Sequence[Path], samples: int, holdout: int) -> tuple[list[Path], list[Path]]:
    """(calibration videos, held-out videos): `samples` spread over the list, then up to `holdout`
    spread over the rest."""
    chosen = spread(videos, samples)
    rest = [v for v in videos if v not in set(chosen)]
    return chosen, spread(rest, holdout) if holdout > 0 else []


def save_calibration(path: str | Path, frames: np.ndarray, videos: Sequence[str]) -> None:
    """Write the tensors and their video names (compressed npz; padding and masks compress well)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(
            f, frames=np.asarray(frames, np.float32), videos=np.array([str(v) for v in videos])
        )


def load_calibration(path: str | Path, vision: VisionConfig | None = None) -> tuple[np.ndarray, list[str]]:
    """(frames, video names) from a `calibration.npz`; with `vision`, the shape must be the model's."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            frames, videos = data["frames"], [str(v) for v in data["videos"]]
    except (OSError, KeyError, ValueError) as exc:
        raise PandaError(f"{path}: not a calibration file ({exc})") from None
    if vision is not None:
        expected = (vision.video_frames, 4, vision.image_size, vision.image_size)
        if frames.ndim != 5 or tuple(frames.shape[1:]) != expected or len(frames) != len(videos):
            raise PandaError(f"{path}: frames of shape {frames.shape}, this model takes (N, *{expected})")
    return frames.astype(np.float32, copy=False), videos
