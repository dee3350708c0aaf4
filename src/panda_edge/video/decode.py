"""Read video files into RGB uint8 frames with the official Video-Panda frame sampling.

No torch here: this runs on devices (Jetson) without it. Every problem with the input file
becomes one `VideoError` line naming the file; PyAV/FFmpeg exceptions never escape.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass

import av
import numpy as np

from panda_edge.errors import VideoError

# The official loader samples on a 1 frame-per-second grid (video_framerate=1).
_SAMPLE_FPS = 1

# What PyAV raises for bad input. Its FFmpegError subclasses also derive from OSError/ValueError;
# UnicodeDecodeError (bad metadata) is a ValueError.
_AV_ERRORS = (av.error.FFmpegError, OSError, ValueError)


@dataclass(frozen=True)
class DecodedVideo:
    """Sampled frames plus the stream facts the sampling was computed from."""

    frames: list[np.ndarray]  # sampled frames, each (H, W, 3) uint8 RGB, in time order
    indices: list[int]  # the frame indices that were sampled
    num_frames: int  # total decodable frames in the stream
    fps: float  # average frame rate used for sampling
    width: int
    height: int


def sample_frame_indices(num_frames: int, fps: float, max_frames: int = 8) -> list[int]:
    """Frame indices exactly as the official decord `_get_rawvideo_dec` picks them for a whole video.

    Two guards where the official code crashes: fps < 0.5 rounds to a stride of 0, and a one-frame
    video divides by zero.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive finite number, got {fps}")
    f_end = num_frames - 1
    t_stride = max(1, round(float(fps) / _SAMPLE_FPS))
    all_pos = list(range(0, f_end + 1, t_stride))
    if len(all_pos) > max_frames:
        picks = np.linspace(0, len(all_pos) - 1, num=max_frames, dtype=int)
        return [all_pos[int(i)] for i in picks]
    if len(all_pos) < max_frames:
        return _respaced(f_end, min(max_frames, num_frames))
    return all_pos


def _respaced(f_end: int, count: int) -> list[int]:
    """The official short-video branch: `count` evenly strided positions starting at 0."""
    if count == 1:
        return [0]
    t_stride = max(1, f_end // (count - 1))
    return list(range(0, t_stride * (count - 1) + 1, t_stride))


def read_video(path: str | os.PathLike, max_frames: int = 8) -> DecodedVideo:
    """Decode `path` and return the officially sampled frames as RGB uint8 arrays.

    Frames are counted by decoding (container frame counts are 0 or wrong for GIF/WebM/MKV),
    then a second pass converts only the sampled frames. If decoding fails part-way, the frames
    decoded before the failure are the video.
    """
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    name = os.fspath(path)
    _check_file(name)
    with _open(name) as container:
        stream = _video_stream(container, name)
        num_frames, width, height = _count_frames(container, stream, name)
        fps = _frame_rate(container, stream, num_frames)
    indices = sample_frame_indices(num_frames, fps, max_frames)
    with _open(name) as container:
        frames = _decode_at(container, _video_stream(container, name), indices, name)
    return DecodedVideo(frames, indices, num_frames, fps, width, height)


def _check_file(name: str) -> None:
    """Catch the common mistakes before FFmpeg, whose messages for them are vague."""
    try:
        info = os.stat(name)
    except FileNotFoundError:
        raise VideoError(f"{name}: file not found") from None
    except OSError as exc:
        raise VideoError(f"{name}: cannot read file ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise VideoError(f"{name}: is a directory, not a video file")
    if info.st_size == 0:
        raise VideoError(f"{name}: file is empty (0 bytes)")


def _open(name: str) -> av.container.InputContainer:
    """Open for reading; undecodable metadata is ignored rather than failing the whole file."""
    try:
        return av.open(name, metadata_errors="ignore")
    except FileNotFoundError:
        raise VideoError(f"{name}: file not found") from None
    except PermissionError:
        raise VideoError(f"{name}: permission denied") from None
    except _AV_ERRORS:
        raise VideoError(f"{name}: not a readable video (unknown format, or corrupt or truncated)") from None


def _video_stream(container: av.container.InputContainer, name: str) -> av.VideoStream:
    """The first real video stream; cover art in audio files is a one-picture 'video' stream."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            stream.thread_type = "AUTO"
            return stream
    raise VideoError(f"{name}: not a video file (no video stream found)")


def _count_frames(
    container: av.container.InputContainer, stream: av.VideoStream, name: str
) -> tuple[int, int, int]:
    """Count decodable frames up to the end or the first decode error; size from the first frame."""
    count, width, height = 0, 0, 0
    try:
        for frame in container.decode(stream):
            if count == 0:
                width, height = frame.width, frame.height
            count += 1
    except _AV_ERRORS:
        pass  # keep the frames decoded before the corruption
    if count == 0:
        raise VideoError(f"{name}: no video frame could be decoded (corrupt or truncated file)")
    return count, width, height


def _frame_rate(container: av.container.InputContainer, stream: av.VideoStream, num_frames: int) -> float:
    """Average rate as decord reports it, then FFmpeg's guess, then frames/duration, then 1.0."""
    for rate in (stream.average_rate, stream.guessed_rate):
        if _usable(rate):
            return float(rate)
    seconds = _duration_seconds(container, stream)
    if seconds is not None and _usable(num_frames / seconds):
        return num_frames / seconds
    return 1.0


def _duration_seconds(container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / av.time_base
    else:
        return None
    return seconds if seconds > 0 else None


def _usable(rate: object) -> bool:
    return rate is not None and math.isfinite(float(rate)) and float(rate) > 0


def _decode_at(
    container: av.container.InputContainer, stream: av.VideoStream, indices: list[int], name: str
) -> list[np.ndarray]:
    """Convert only the wanted frames to RGB, stopping after the last one."""
    wanted = set(indices)
    frames: list[np.ndarray] = []
    try:
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) == len(wanted):
                    break
    except _AV_ERRORS:
        pass  # reported below if a wanted frame was lost
    if len(frames) != len(wanted):
        raise VideoError(f"{name}: decoding stopped early; got {len(frames)} of {len(wanted)} sampled frames")
    return frames
