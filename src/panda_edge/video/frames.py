"""A video given as frames (a harness's images, a live window): checked, sampled to the model's
frame count by the official rule, and known by their content.

Frames given without a frame rate are a video at one frame per second, so the official sampler
(`decode.sample_frame_indices`) keeps all of them when there are at most `video_frames` (the model
pads the rest, as for a short video) and picks `video_frames` evenly spaced ones, first and last
included (`np.linspace(0, n - 1, video_frames)` rounded down), when there are more. A live window
passes its stream's frame rate and is sampled as a video file of that length would be.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from panda_edge.errors import VideoError
from panda_edge.video.decode import sample_frame_indices

# The most frames one request may send as a video: a harness that sends more is sampling finer than
# any frame count the model takes (8), and each frame is a decoded image held in memory.
MAX_FRAMES = 128


def check_count(count: int, max_frames: int = MAX_FRAMES) -> None:
    """VideoError unless 1..max_frames frames make the video (counted before any is decoded)."""
    if count == 0:
        raise VideoError("no frames: send at least one image")
    if count > max_frames:
        raise VideoError(f"{count} frames; at most {max_frames} frames make one video")


def check_size(index: int, size: tuple[int, int], first: tuple[int, int]) -> None:
    """VideoError unless frame `index` (0-based) is `first`'s (width, height)."""
    if size != first:
        raise VideoError(
            f"frame {index + 1} is {size[0]}x{size[1]}, frame 1 is {first[0]}x{first[1]}: "
            "the frames of one video must have one size"
        )


def check_frames(frames: Sequence[np.ndarray], max_frames: int = MAX_FRAMES) -> None:
    """VideoError unless `frames` are 1..max_frames RGB uint8 images of one size."""
    check_count(len(frames), max_frames)
    height, width = frames[0].shape[:2]
    for i, frame in enumerate(frames):
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise VideoError(f"frame {i + 1} is not an RGB image (shape {frame.shape}, {frame.dtype})")
        check_size(i, (frame.shape[1], frame.shape[0]), (width, height))


def sampled_indices(count: int, video_frames: int, fps: float = 1.0) -> list[int]:
    """Which of `count` frames the model sees, by the official sampler's rule (module docstring)."""
    return sample_frame_indices(count, fps, video_frames)


def sample_frames(
    frames: Sequence[np.ndarray], video_frames: int, fps: float = 1.0, max_frames: int = MAX_FRAMES
) -> list[np.ndarray]:
    """The frames the model sees, by the official sampler's rule (module docstring); at most
    `max_frames` may be given (a live window's bound is its own: seconds x frame rate)."""
    check_frames(frames, max_frames)
    return [frames[i] for i in sampled_indices(len(frames), video_frames, fps)]


def frames_key(frames: Sequence[np.ndarray]) -> str:
    """What a video given as frames is known by (its prefix in the KV cache and on disk): the sha256
    of each frame's size and pixels, in order."""
    digest = hashlib.sha256(b"frames-v1")
    for frame in frames:
        digest.update(np.asarray(frame.shape, np.int64).tobytes())
        digest.update(np.ascontiguousarray(frame).data)
    return digest.hexdigest()
