"""Decoding real files written with PyAV: sampling, pixels, containers and broken inputs."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from panda_edge.config import preset
from panda_edge.errors import VideoError
from panda_edge.video import load_video, load_videos
from panda_edge.video.decode import DecodedVideo, _frame_rate, read_video, sample_frame_indices
from panda_edge.video.encode import write_video

H, W = 48, 64
LOSSY_TOL = 12  # yuv420p round trip of a flat color is off by ~3; neighbours differ by >= 40


def _color(i: int) -> np.ndarray:
    """Frame i's color; any two of the first 120 differ by >= 40 in some channel."""
    return np.array([(i * 31) % 256, (i * 101) % 256, (i * 29) % 256], dtype=np.uint8)


def _solid_frames(n: int, height: int = H, width: int = W) -> list[np.ndarray]:
    return [np.broadcast_to(_color(i), (height, width, 3)).copy() for i in range(n)]


def _assert_sampled_pixels(video: DecodedVideo, sources: list[np.ndarray], tol: int) -> None:
    """Each sampled frame must show its own source frame's color, proving the indices, not just the count."""
    assert len(video.frames) == len(video.indices)
    for frame, index in zip(video.frames, video.indices, strict=True):
        assert frame.dtype == np.uint8
        assert frame.shape == sources[index].shape
        diff = np.abs(frame.astype(np.int16) - sources[index].astype(np.int16)).max()
        assert diff < tol, f"frame {index}: max abs diff {diff}"


def _write_audio_only(path: Path) -> None:
    """One second of AAC tone and no video stream."""
    rate, size = 8000, 1024
    tone = (0.2 * np.sin(np.arange(rate) * 0.05)).astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        for start in range(0, rate, size):
            frame = av.AudioFrame.from_ndarray(tone[None, start : start + size], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _faststart_mp4_bytes(tmp_path: Path, frames: list[np.ndarray], fps: int) -> bytes:
    """An mp4 with its index (moov) first, as web video is served: cut short, it opens and then fails."""
    path = tmp_path / "faststart.mp4"
    with av.open(str(path), "w", options={"movflags": "+faststart", "fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=fps, options={"threads": "1"})
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path.read_bytes()


def _mdat_span(data: bytes) -> tuple[int, int]:
    """Byte range of the top-level mp4 box holding the frame data (32-bit box sizes only)."""
    offset = 0
    while offset + 8 <= len(data):
        size, kind = int.from_bytes(data[offset : offset + 4], "big"), data[offset + 4 : offset + 8]
        if kind == b"mdat":
            return offset, offset + size
        if size < 8:
            break
        offset += size
    raise AssertionError("no mdat box")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_decoding_does_not_import_torch() -> None:
    """The device install has no torch; importing it here would break the Jetson path."""
    code = "import sys, panda_edge.video.decode, panda_edge.video.encode; sys.exit('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    assert subprocess.run([sys.executable, "-c", code], env=env, check=False).returncode == 0


# --- sample_frame_indices: the official _get_rawvideo_dec branches -------------------------------


@pytest.mark.parametrize(
    ("num_frames", "fps", "expected"),
    [
        (120, 8.0, [0, 16, 32, 48, 64, 80, 96, 112]),  # 15 grid positions > 8: linspace pick
        (40, 10.0, [0, 5, 10, 15, 20, 25, 30, 35]),  # 4 grid positions < 8: re-spaced, stride 39 // 7
        (90, 30.0, [0, 12, 24, 36, 48, 60, 72, 84]),  # 3 s at 30 fps: stride 89 // 7
        (64, 8.0, [0, 8, 16, 24, 32, 40, 48, 56]),  # exactly 8 grid positions: kept as is
        (5, 30.0, [0, 1, 2, 3, 4]),  # fewer frames than 8: all of them
        (1, 25.0, [0]),  # official code divides by zero here
        (20, 0.3, [0, 2, 5, 8, 10, 13, 16, 19]),  # stride rounds to 0 officially; guarded to 1
        (30, 2.5, [0, 4, 8, 12, 16, 20, 24, 28]),  # round(2.5) == 2 (banker's rounding, like official)
    ],
)
def test_sample_frame_indices_branches(num_frames: int, fps: float, expected: list[int]) -> None:
    assert sample_frame_indices(num_frames, fps) == expected


def test_sample_frame_indices_max_frames() -> None:
    assert sample_frame_indices(100, 1.0, max_frames=4) == [0, 33, 66, 99]
    assert sample_frame_indices(3, 1.0, max_frames=16) == [0, 1, 2]


@pytest.mark.parametrize("num_frames", [1, 2, 7, 8, 9, 17, 64, 301])
@pytest.mark.parametrize("fps", [0.2, 1.0, 7.5, 24.0, 29.97, 60.0])
def test_sample_frame_indices_invariants(num_frames: int, fps: float) -> None:
    indices = sample_frame_indices(num_frames, fps)
    assert len(indices) == min(8, num_frames)
    assert indices == sorted(set(indices))
    assert indices[0] == 0 and indices[-1] < num_frames


@pytest.mark.parametrize(
    ("num_frames", "fps", "max_frames"), [(0, 10.0, 8), (10, 0.0, 8), (10, float("nan"), 8), (10, 10.0, 0)]
)
def test_sample_frame_indices_rejects_bad_arguments(num_frames: int, fps: float, max_frames: int) -> None:
    with pytest.raises(ValueError):
        sample_frame_indices(num_frames, fps, max_frames)


# --- read_video on real files --------------------------------------------------------------------


def test_mp4_short_grid_is_respaced(tmp_path: Path) -> None:
    sources = _solid_frames(40)
    path = tmp_path / "clip.mp4"
    write_video(path, sources, fps=10)
    video = read_video(path)
    assert (video.num_frames, video.fps, video.width, video.height) == (40, 10.0, W, H)
    assert video.indices == sample_frame_indices(40, 10.0) == [0, 5, 10, 15, 20, 25, 30, 35]
    _assert_sampled_pixels(video, sources, LOSSY_TOL)


def test_load_videos_keeps_order_whatever_the_thread_count(tmp_path: Path) -> None:
    """Threads finish out of order; the array and the progress count must not show it."""
    vision = preset("tiny").vision
    paths = []
    for k in range(5):
        paths.append(tmp_path / f"clip{k}.mp4")
        write_video(paths[-1], _solid_frames(12 + 4 * k)[k:], fps=10)
    one_by_one = np.stack([load_video(p, vision) for p in paths])
    counts: list[int] = []
    threaded = load_videos(paths, vision, on_video=counts.append, workers=3)
    assert threaded.shape == (5, vision.video_frames, 4, vision.image_size, vision.image_size)
    np.testing.assert_array_equal(threaded, one_by_one)
    np.testing.assert_array_equal(load_videos(paths, vision, workers=1), one_by_one)
    assert counts == [1, 2, 3, 4, 5]
    assert len({one_by_one[k].tobytes() for k in range(5)}) == 5  # the videos differ, so order shows
    with pytest.raises(ValueError, match="at least 1"):
        load_videos(paths, vision, workers=0)
    (tmp_path / "broken.mp4").write_text("not a video")
    with pytest.raises(VideoError, match=r"broken\.mp4"):
        load_videos([*paths, tmp_path / "broken.mp4"], vision, workers=2)


def test_mp4_long_uses_linspace_on_1fps_grid(tmp_path: Path) -> None:
    sources = _solid_frames(120)
    path = tmp_path / "long.mp4"
    write_video(path, sources, fps=8)
    video = read_video(str(path))
    assert (video.num_frames, video.fps) == (120, 8.0)
    assert video.indices == [0, 16, 32, 48, 64, 80, 96, 112]
    _assert_sampled_pixels(video, sources, LOSSY_TOL)


def test_short_clip_keeps_every_frame(tmp_path: Path) -> None:
    sources = _solid_frames(5)
    path = tmp_path / "five.mp4"
    write_video(path, sources, fps=30)
    video = read_video(path)
    assert video.num_frames == 5 and video.indices == [0, 1, 2, 3, 4]
    _assert_sampled_pixels(video, sources, LOSSY_TOL)


def test_gif_is_lossless_for_flat_colors(tmp_path: Path) -> None:
    sources = _solid_frames(20)
    sources[3][10:20, 5:40] = (255, 0, 0)  # more than one color per frame still round-trips exactly
    path = tmp_path / "anim.gif"
    write_video(path, sources, fps=10)
    video = read_video(path)
    assert (video.num_frames, video.fps) == (20, 10.0)
    assert video.indices == sample_frame_indices(20, 10.0)
    _assert_sampled_pixels(video, sources, 1)


def test_gif_rate_is_quantized_to_centiseconds(tmp_path: Path) -> None:
    path = tmp_path / "eight.gif"
    write_video(path, _solid_frames(4), fps=8)
    assert read_video(path).fps == pytest.approx(100 / 12)


def test_gif_with_many_colors_is_posterized(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sources = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(3)]
    path = tmp_path / "noise.gif"
    write_video(path, sources, fps=10)
    _assert_sampled_pixels(read_video(path), sources, 43)  # 3-3-2 levels: blue steps of 85


@pytest.mark.parametrize(("height", "width"), [(96, 48), (48, 160)], ids=["portrait", "wide"])
def test_frame_shape_follows_the_video(tmp_path: Path, height: int, width: int) -> None:
    sources = _solid_frames(6, height, width)
    path = tmp_path / f"{width}x{height}.mp4"
    write_video(path, sources, fps=6)
    video = read_video(path)
    assert (video.width, video.height) == (width, height)
    assert all(frame.shape == (height, width, 3) for frame in video.frames)
    _assert_sampled_pixels(video, sources, LOSSY_TOL)


@pytest.mark.parametrize("suffix", [".mkv", ".webm", ".avi", ".mov"])
def test_other_containers_decode(tmp_path: Path, suffix: str) -> None:
    sources = _solid_frames(12)
    path = tmp_path / f"clip{suffix}"
    write_video(path, sources, fps=4)
    video = read_video(path)
    assert (video.num_frames, video.fps) == (12, 4.0)
    assert video.indices == sample_frame_indices(12, 4.0)
    _assert_sampled_pixels(video, sources, LOSSY_TOL)


def test_max_frames_is_passed_through(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    write_video(path, _solid_frames(40), fps=10)
    assert read_video(path, max_frames=4).indices == sample_frame_indices(40, 10.0, 4)


def test_corruption_mid_stream_keeps_frames_before_it(tmp_path: Path) -> None:
    sources = _solid_frames(40)
    data = _faststart_mp4_bytes(tmp_path, sources, fps=10)
    start, end = _mdat_span(data)
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: start + (end - start) * 3 // 4])
    with av.open(str(path)) as container, pytest.raises(av.error.FFmpegError):
        list(container.decode(video=0))  # the premise: PyAV itself fails part-way through
    video = read_video(path)
    assert 1 <= video.num_frames < 40
    assert video.indices == sample_frame_indices(video.num_frames, 10.0)
    _assert_sampled_pixels(video, sources, LOSSY_TOL)


@pytest.mark.parametrize(
    ("average", "guessed", "duration", "container_duration", "expected"),
    [
        (Fraction(30000, 1001), Fraction(30), 100, None, 30000 / 1001),  # average_rate wins
        (None, Fraction(12), 100, None, 12.0),  # then guessed_rate
        (Fraction(0), None, 40, None, 5.0),  # then frames / stream duration (20 frames, 4 s)
        (None, None, None, 2 * av.time_base, 10.0),  # then frames / container duration
        (None, None, None, None, 1.0),  # nothing known
    ],
)
def test_frame_rate_fallbacks(average, guessed, duration, container_duration, expected) -> None:
    stream = SimpleNamespace(
        average_rate=average, guessed_rate=guessed, duration=duration, time_base=Fraction(1, 10)
    )
    container = SimpleNamespace(duration=container_duration)
    assert _frame_rate(container, stream, 20) == pytest.approx(expected)


# --- broken inputs: one VideoError line naming the file --------------------------------------------


def _assert_video_error(path: Path, problem: str) -> None:
    with pytest.raises(VideoError) as info:
        read_video(path)
    message = str(info.value)
    assert path.name in message and problem in message and "\n" not in message
    error = info.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_missing_file(tmp_path: Path) -> None:
    _assert_video_error(tmp_path / "missing.mp4", "file not found")


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp4"
    path.touch()
    _assert_video_error(path, "empty")


def test_directory(tmp_path: Path) -> None:
    path = tmp_path / "folder.mp4"
    path.mkdir()
    _assert_video_error(path, "directory")


def test_text_file_named_mp4(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 20)
    _assert_video_error(path, "not a readable video")


def test_truncated_mp4(tmp_path: Path) -> None:
    whole = tmp_path / "whole.mp4"
    write_video(whole, _solid_frames(20), fps=10)
    path = tmp_path / "truncated.mp4"
    path.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.3)])
    _assert_video_error(path, "not a readable video")  # moov is at the end, so nothing is readable


def test_no_decodable_frame(tmp_path: Path) -> None:
    data = _faststart_mp4_bytes(tmp_path, _solid_frames(20), fps=10)
    start, _ = _mdat_span(data)
    path = tmp_path / "stub.mp4"
    path.write_bytes(data[: start + 16])  # the index is complete, the frame data is gone
    _assert_video_error(path, "no video frame could be decoded")


def test_audio_only_file(tmp_path: Path) -> None:
    path = tmp_path / "voice.m4a"
    _write_audio_only(path)
    _assert_video_error(path, "no video stream")


# --- write_video -----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".webm", ".gif"])
def test_write_video_is_deterministic(tmp_path: Path, suffix: str) -> None:
    frames = _solid_frames(6)
    first, second = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    write_video(first, frames)
    write_video(second, frames)
    assert _digest(first) == _digest(second)


def test_write_video_rejects_odd_size_for_h264(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", _solid_frames(2, 47, 64))
    assert list(tmp_path.iterdir()) == []


def test_write_video_rejects_bad_frames(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_video(tmp_path / "x.mp4", [])
    with pytest.raises(ValueError):
        write_video(tmp_path / "x.mp4", [np.zeros((H, W, 3), np.float32)])
    with pytest.raises(ValueError):
        write_video(tmp_path / "x.mp4", _solid_frames(1) + _solid_frames(1, 32, 32))
    with pytest.raises(ValueError, match="suffix"):
        write_video(tmp_path / "x.xyz", _solid_frames(1))


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises((av.error.FFmpegError, ValueError)):
        write_video(tmp_path / "x.mp4", _solid_frames(2), codec="no-such-codec")
    assert list(tmp_path.iterdir()) == []


def test_write_replaces_existing_file_atomically(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"old")
    write_video(path, _solid_frames(3))
    assert read_video(path).num_frames == 3
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
    assert os.stat(path).st_size > 3
