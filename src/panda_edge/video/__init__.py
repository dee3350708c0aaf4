"""Video decoding and pre-processing (numpy, Pillow and PyAV; no torch)."""

from __future__ import annotations

import os

import numpy as np

from panda_edge.config import VisionConfig
from panda_edge.video.preprocess import preprocess_frames


def load_video(path: str | os.PathLike, vision: VisionConfig) -> np.ndarray:
    """Decode, sample and pre-process one video -> (video_frames, 4, S, S) float32."""
    from panda_edge.video.decode import read_video

    decoded = read_video(path, max_frames=vision.video_frames)
    return preprocess_frames(decoded.frames, vision)
