"""Write RGB frames to a real video file.

Used by the tests and by the toy-world generator, so both exercise the same
container/codec paths that users' files go through. H.264 output is a pure function of the frames
and the FFmpeg/x264 build: not of the CPU, the core count or the load. Three things made it
depend on the machine, and all are pinned here:

- The bytes right of the picture in each plane row: PyAV leaves them uninitialized and x264's
  SIMD reads some (setting them made repeated encodes identical), so on an AVX-512 CPU one process
  encoding the same frames twice could write two files, and toy-world videos differed between
  workers=1 and one worker per core. Every plane byte is set here.
- x264's hand-written SIMD itself: with clean input, its AVX-512, AVX2 and C code still gave three
  different streams for some toy videos (the SIMD kernels are not all bit-exact with C). `asm=0`
  runs the C code, which every CPU computes alike (~1.7x slower: ~21 ms instead of ~12 ms per toy
  video).
- swscale's RGB -> YUV conversion, which has CPU-specific code paths. Frames are converted here in
  integer numpy (BT.601 limited range, 2x2 chroma average) and handed to the encoder as yuv420p.

Threads: one encoder thread (`threads=1`, no sliced threads, one lookahead thread); x264 writes
these settings into the stream's SEI, which the tests read back.
"""

from __future__ import annotations

import numbers
import os
import secrets
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

_CODEC_BY_SUFFIX = {
    ".mp4": "libx264",
    ".mov": "libx264",
    ".mkv": "libx264",
    ".webm": "libvpx-vp9",
    ".avi": "mpeg4",
    ".gif": "gif",
}

# One encoder thread: x264/libvpx output can depend on the thread count, which differs between machines.
# x264: C code only (asm=0), one thread that also does the lookahead, no slices (see the module doc).
_CODEC_OPTIONS = {
    "libx264": {
        "preset": "medium",
        "threads": "1",
        "x264-params": "asm=0:threads=1:lookahead-threads=1:sliced-threads=0",
    },
    "libvpx-vp9": {"threads": "1"},
    "libvpx": {"threads": "1"},
    "mpeg4": {"threads": "1"},
}

# Without bitexact, the Matroska/WebM muxer writes a random segment UID, so two writes differ.
_CONTAINER_OPTIONS = {"fflags": "+bitexact"}

# libx264 with yuv420p refuses odd sizes with an opaque "Generic error in an external library".
_EVEN_SIZE_CODECS = frozenset({"libx264"})


def write_video(
    path: str | os.PathLike, frames: Sequence[np.ndarray], fps: int = 8, codec: str | None = None
) -> None:
    """Encode (H, W, 3) uint8 RGB frames to `path`; the codec follows the suffix when not given.

    Writes to a hidden temporary file in the same directory and renames it into place, so an
    interrupted write never leaves a half file under the final name. GIF stores delays in
    hundredths of a second, so a GIF at 8 fps reads back at 100/12 = 8.33 fps.
    """
    target = Path(path)
    height, width = _check_frames(frames)
    if isinstance(fps, bool) or not isinstance(fps, numbers.Integral) or fps < 1:
        raise ValueError(f"fps must be a positive integer, got {fps!r}")
    fps = int(fps)
    codec = codec or _codec_for_suffix(target.suffix)
    if codec in _EVEN_SIZE_CODECS and (height % 2 or width % 2):
        raise ValueError(f"{codec} with yuv420p needs an even width and height, got {width}x{height}")
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp{target.suffix}")
    try:
        _encode(tmp, frames, fps, codec, width, height)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_frames(frames: Sequence[np.ndarray]) -> tuple[int, int]:
    """Fail before touching the disk: every frame must be the same (H, W, 3) uint8 shape."""
    if len(frames) == 0:
        raise ValueError("no frames to write")
    first = frames[0]
    for i, frame in enumerate(frames):
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frame {i}: expected (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
        if frame.shape != first.shape:
            raise ValueError(f"frame {i}: shape {frame.shape} differs from frame 0 {first.shape}")
    return first.shape[0], first.shape[1]


def _codec_for_suffix(suffix: str) -> str:
    """Pick the encoder for a container; VP9 falls back to VP8 on FFmpeg builds without it."""
    codec = _CODEC_BY_SUFFIX.get(suffix.lower())
    if codec is None:
        known = ", ".join(sorted(_CODEC_BY_SUFFIX))
        raise ValueError(f"no default codec for suffix {suffix!r} (known: {known}); pass codec=")
    if codec == "libvpx-vp9" and not _has_encoder(codec):
        return "libvpx"
    return codec


def _has_encoder(name: str) -> bool:
    try:
        av.Codec(name, "w")
    except (av.error.FFmpegError, ValueError):  # PyAV's UnknownCodecError is a ValueError
        return False
    return True


def _encode(path: Path, frames: Sequence[np.ndarray], fps: int, codec: str, width: int, height: int) -> None:
    time_base = Fraction(1, fps)
    with av.open(str(path), "w", options=_CONTAINER_OPTIONS) as container:
        stream = container.add_stream(codec, rate=fps, options=_CODEC_OPTIONS.get(codec, {}))
        stream.width, stream.height = width, height
        stream.pix_fmt = "pal8" if codec == "gif" else "yuv420p"
        # PyAV's own default is one thread per CPU, slice-threaded; `threads` above overrides the
        # count when the codec opens, and this makes the choice visible before it does.
        stream.codec_context.thread_count = 1
        for i, rgb in enumerate(frames):
            frame = _to_av_frame(rgb, stream.pix_fmt)
            frame.pts, frame.time_base = i, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _to_av_frame(rgb: np.ndarray, pix_fmt: str) -> av.VideoFrame:
    """The encoder's input frame, converted here rather than by swscale (see the module doc)."""
    if pix_fmt == "pal8":
        return av.VideoFrame.from_ndarray(_to_pal8(rgb), format="pal8")
    frame = av.VideoFrame(rgb.shape[1], rgb.shape[0], "yuv420p")
    for plane, values in zip(frame.planes, rgb_to_yuv420(rgb), strict=True):
        _fill_plane(plane, values)
    return frame


# BT.601, limited range, in 1/256ths: what decoders assume for a stream that does not say (as ours).
_RGB_TO_Y = np.array([66, 129, 25], dtype=np.int32)
_RGB_TO_U = np.array([-38, -74, 112], dtype=np.int32)
_RGB_TO_V = np.array([112, -94, -18], dtype=np.int32)


def rgb_to_yuv420(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 RGB -> Y (H, W), U and V (ceil(H/2), ceil(W/2)) uint8, in integers only.

    Chroma is the rounded mean of each 2x2 block's (odd sizes: the edge is repeated). Integer
    arithmetic gives the same bytes on every CPU, which swscale's SIMD paths do not promise.
    """
    pixels = rgb.astype(np.int32)
    y = ((pixels @ _RGB_TO_Y + 128) >> 8) + 16
    h, w = rgb.shape[:2]
    even = np.pad(pixels, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    blocks = even.reshape(even.shape[0] // 2, 2, even.shape[1] // 2, 2, 3).sum(axis=(1, 3))  # 4x the mean
    u = ((blocks @ _RGB_TO_U + 512) >> 10) + 128
    v = ((blocks @ _RGB_TO_V + 512) >> 10) + 128
    return tuple(np.clip(c, 0, 255).astype(np.uint8) for c in (y, u, v))  # type: ignore[return-value]


def _fill_plane(plane: av.video.plane.VideoPlane, values: np.ndarray) -> None:
    """Write every byte of the plane, the padding right of the picture too (repeating the last
    column): a frame from PyAV is uninitialized memory, and an encoder's SIMD may read past the edge."""
    padded = np.pad(values, ((0, 0), (0, plane.line_size - values.shape[1])), mode="edge")
    plane.update(padded.tobytes())


def _to_pal8(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact palette when the frame has at most 256 colors (flat toy-world art); else 3-3-2 posterized.

    Returns (indices (H, W) uint8, palette (256, 4) uint8 in the ARGB column order PyAV expects).
    """
    colors, inverse = _unique_colors(rgb)
    if len(colors) > 256:
        colors, inverse = _unique_colors(_posterize_332(rgb))
    palette = np.zeros((256, 4), dtype=np.uint8)
    palette[:, 0] = 255
    palette[: len(colors), 1:] = colors
    return inverse.reshape(rgb.shape[:2]).astype(np.uint8), palette


def _unique_colors(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct colors as (N, 3) uint8 plus each pixel's index; packs to uint32 because it is much faster."""
    pixels = rgb.reshape(-1, 3).astype(np.uint32)
    packed = (pixels[:, 0] << 16) | (pixels[:, 1] << 8) | pixels[:, 2]
    values, inverse = np.unique(packed, return_inverse=True)
    colors = np.stack([(values >> 16) & 255, (values >> 8) & 255, values & 255], axis=1).astype(np.uint8)
    return colors, inverse.reshape(-1)


def _posterize_332(rgb: np.ndarray) -> np.ndarray:
    """Round to 8 red, 8 green and 4 blue levels: at most 256 colors, like FFmpeg's rgb8."""
    levels = np.array([7, 7, 3], dtype=np.float32)
    steps = np.rint(rgb.astype(np.float32) * levels / 255.0)
    return np.rint(steps * 255.0 / levels).astype(np.uint8)
