"""Default clips for `panda parity`: the shapes that exercise every crop path (no torch).

Square (no padding), 16:9 (padding above and below), 9:16 (left and right), and a 5-frame clip
(three all-padding frames), with textured, moving content so every token carries signal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from panda_edge.video.encode import write_video


def clip_frames(n: int, width: int, height: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    side = max(4, min(width, height) // 4)
    frames = []
    for i in range(n):
        frame = np.roll(background, 3 * i, axis=1)
        x = int(i * (width - side) / max(n - 1, 1))
        y = (height - side) // 2
        frame[y : y + side, x : x + side] = rng.integers(0, 256, 3, dtype=np.uint8)
        frames.append(frame)
    return frames


def _even(value: float) -> int:
    return max(2, round(value / 2) * 2)


def write_parity_clips(directory: str | Path, image_size: int) -> list[Path]:
    """Write the four clips (mp4) sized for a model of `image_size` px; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    long, short = _even(image_size), _even(image_size * 9 / 16)
    clips = {
        "square.mp4": (16, long, long),
        "landscape_16x9.mp4": (16, long, short),
        "portrait_9x16.mp4": (16, short, long),
        "five_frames.mp4": (5, long, short),
    }
    paths = []
    for seed, (name, (n, width, height)) in enumerate(clips.items()):
        path = directory / name
        write_video(path, clip_frames(n, width, height, seed), fps=8)
        paths.append(path)
    return paths
