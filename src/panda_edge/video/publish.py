"""A local live stream for tests and benchmarks: frames sent as MPEG-TS (H.264) in real time.

`python -m panda_edge.video.publish URL [VIDEO ...] [--fps 25] [--size 640x360] [--loop]` listens on
`tcp://HOST:PORT?listen=1` (one viewer; it waits for it to connect) or sends to `udp://HOST:PORT`,
pacing frames at `--fps` from the wall clock, as a camera would. Its frames are the given videos one
after another (each resized to the first one's size, or `--size`), or a moving test pattern when
none is given. No ffmpeg binary needed: PyAV's FFmpeg muxes the stream.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from fractions import Fraction

import av
import numpy as np


def pattern(width: int, height: int, fps: float) -> Iterator[np.ndarray]:
    """A test pattern: colour bars with a white square crossing them once a second-ish."""
    bars = np.zeros((height, width, 3), np.uint8)
    colors = [(255, 255, 255), (255, 255, 0), (0, 255, 255), (0, 255, 0), (255, 0, 255), (255, 0, 0)]
    for i, color in enumerate(colors):
        bars[:, i * width // len(colors) : (i + 1) * width // len(colors)] = color
    side = max(8, height // 6)
    n = 0
    while True:
        frame = bars.copy()
        x = int((n * width / (2 * fps)) % (width - side))
        frame[height // 2 - side // 2 : height // 2 + side // 2, x : x + side] = 255
        yield frame
        n += 1


def video_frames(paths: Sequence[str], size: tuple[int, int] | None) -> tuple[list[np.ndarray], float]:
    """Every frame of `paths` in order, resized to `size` (default: the first video's), and the first
    video's frame rate."""
    frames: list[np.ndarray] = []
    fps = 0.0
    for path in paths:
        with av.open(path) as container:
            stream = container.streams.video[0]
            fps = fps or float(stream.average_rate or 25)
            for frame in container.decode(stream):
                if size is None:
                    size = (frame.width, frame.height)
                frames.append(frame.reformat(size[0], size[1], "rgb24").to_ndarray())
    return frames, fps


def publish(
    url: str, frames: Iterator[np.ndarray], fps: float, width: int, height: int, every: int = 1
) -> int:
    """Send `frames` to `url` as MPEG-TS at `fps` (wall clock); returns the frames sent. A viewer that
    goes away ends it. `every` > 1 sends only every that many frames, with their own timestamps, while
    announcing `fps`: a camera that delivers fewer frames than it says (low light)."""
    rate = Fraction(fps).limit_denominator(1000)
    sent = 0
    with av.open(url, "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(max(1, round(fps)))}
        start = None  # the clock starts once a viewer is there: the first write waits for it
        try:
            for i, rgb in enumerate(frames):
                if start is not None and (wait := start + i / fps - time.monotonic()) > 0:
                    time.sleep(wait)
                if i % every:
                    continue
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts = i
                frame.time_base = 1 / rate
                container.mux(stream.encode(frame))
                start = start if start is not None else time.monotonic()
                sent = i + 1
            container.mux(stream.encode(None))
        except (BrokenPipeError, ConnectionError, av.error.FFmpegError):
            pass
    return sent


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m panda_edge.video.publish", description=__doc__)
    parser.add_argument("url", help="tcp://127.0.0.1:PORT?listen=1 or udp://127.0.0.1:PORT")
    parser.add_argument("videos", nargs="*", help="videos to send in order (default: a test pattern)")
    parser.add_argument(
        "--fps",
        type=float,
        default=None,
        help="frames per second (default: the first video's, or 25)",
    )
    parser.add_argument("--size", default=None, help="WIDTHxHEIGHT (default: the first video's, or 640x360)")
    parser.add_argument("--loop", action="store_true", help="send the videos again and again")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument(
        "--every", type=int, default=1, help="send every Nth frame only, still announcing --fps"
    )
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x")) if args.size else None
    if args.videos:
        clip, clip_fps = video_frames(args.videos, size)
        fps = args.fps or clip_fps
        height, width = clip[0].shape[:2]

        def frames() -> Iterator[np.ndarray]:
            while True:
                yield from clip
                if not args.loop:
                    return

        source = frames()
    else:
        fps = args.fps or 25.0
        width, height = size or (640, 360)
        source = pattern(width, height, fps)
    if args.seconds is not None:
        source = _limit(source, args.seconds * fps)
    print(f"publishing {width}x{height} at {fps:g} fps to {args.url}", file=sys.stderr, flush=True)
    publish(args.url, source, fps, width, height, max(1, args.every))
    return 0


def _limit(frames: Iterator[np.ndarray], n: float) -> Iterator[np.ndarray]:
    for i, frame in enumerate(frames):
        if i >= n:
            return
        yield frame


if __name__ == "__main__":
    sys.exit(main())
