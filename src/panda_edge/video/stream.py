"""Live video in: frames from a camera, a network stream or a file, read through PyAV/FFmpeg.

A source is a URL FFmpeg reads (`rtsp://`, `rtmp://`, `http(s)://` for MJPEG and HLS, `udp://` and
`tcp://` for MPEG-TS), a V4L2 device (`/dev/video0`) or a video file. `read_stream` yields decoded RGB
frames with their stream time and the wall-clock time they were read. A network source or device that
drops is opened again with backoff (0.5 s doubling to 10 s), each loss and recovery reported to
`on_event`; a file's end is the stream's end. A file is read as fast as it decodes, or at its own
frame rate with `realtime`. No torch, no threads here: the caller reads in its own thread.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from panda_edge.errors import VideoError

NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "rtp")
# Backoff between attempts to open a dropped source again: doubling from the first to the last.
BACKOFF_S = (0.5, 10.0)
# What PyAV raises for a bad or lost source (its FFmpegError subclasses derive from OSError too).
_AV_ERRORS = (av.error.FFmpegError, OSError, ValueError)
# When FFmpeg says nothing about the rate (some MJPEG and raw streams), a window is sized by this.
FALLBACK_FPS = 25.0


class StreamError(VideoError):
    """A source that cannot be opened at all (a wrong URL, a missing device or file)."""


@dataclass(frozen=True)
class Frame:
    """One decoded frame: RGB uint8 (H, W, 3), its time in the stream (seconds from the connection's
    first frame) and the wall-clock time (`time.time()`) it was read."""

    rgb: np.ndarray
    stream_s: float
    captured: float


@dataclass(frozen=True)
class StreamEvent:
    """Something that happened to the source: connected, lost, reconnected, ended."""

    kind: str
    message: str
    fps: float | None = None


@dataclass(frozen=True)
class Source:
    """Where frames come from and how to open it."""

    url: str
    kind: str  # network, device, file
    realtime: bool = False

    @classmethod
    def parse(cls, source: str, realtime: bool = False) -> Source:
        """StreamError for a path that is neither a file nor a device, or a scheme FFmpeg lacks."""
        scheme = source.split("://", 1)[0].lower() if "://" in source else ""
        if scheme:
            if scheme == "file":
                return cls.parse(source.split("://", 1)[1], realtime)
            if scheme not in NETWORK_SCHEMES:
                schemes = ", ".join(NETWORK_SCHEMES)
                raise StreamError(f"{source}: not a stream URL ({schemes}), a device or a file")
            return cls(source, "network", realtime)
        if source.startswith("/dev/"):
            return cls(source, "device", realtime)
        path = Path(source)
        if not path.exists():
            raise StreamError(f"{source}: no such file or device")
        mode = path.stat().st_mode
        if stat.S_ISCHR(mode):
            return cls(source, "device", realtime)
        if not stat.S_ISREG(mode):
            raise StreamError(f"{source}: not a video file")
        return cls(os.fspath(path), "file", realtime)

    @property
    def display(self) -> str:
        """The URL as logs, events, errors and `GET /v1/streams` show it: a camera's user and password
        (`rtsp://user:pass@host/...`) left out."""
        scheme, sep, rest = self.url.partition("://")
        host, slash, path = rest.partition("/")
        if not sep or "@" not in host:
            return self.url
        return f"{scheme}://***@{host.rsplit('@', 1)[1]}{slash}{path}"

    @property
    def ends(self) -> bool:
        """Whether its end is the end of the run (a file), not a drop to recover from."""
        return self.kind == "file"


class Connection:
    """One opened source: its frame rate and size, and its frames until it ends or drops."""

    def __init__(self, source: Source, timeout_s: float = 5.0) -> None:
        # a live source is probed for half a second, not FFmpeg's five: the frames it reads to probe
        # arrive late, all at once
        options: dict[str, str] = {} if source.kind == "file" else {"analyzeduration": "500000"}
        fmt = None
        if source.kind == "device":
            fmt = "v4l2"
        elif source.url.startswith("rtsp"):
            options["rtsp_transport"] = "tcp"
        elif source.url.startswith("udp"):
            options["overrun_nonfatal"] = "1"
            options["fifo_size"] = "1000000"
        try:
            self.container = av.open(source.url, format=fmt, options=options, timeout=(timeout_s, timeout_s))
        except _AV_ERRORS as exc:
            reason = str(exc).replace(source.url, source.display)
            raise StreamError(f"{source.display}: cannot open it ({reason})") from None
        if not self.container.streams.video:
            self.container.close()
            raise StreamError(f"{source.display}: no video stream in it")
        self.source = source
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        rate = self.stream.guessed_rate or self.stream.average_rate or self.stream.base_rate
        self.fps = float(rate) if rate and 0 < float(rate) < 1000 else FALLBACK_FPS

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        """Decoded frames until the source ends, drops (an FFmpeg error) or `stop` is set."""
        first_pts: float | None = None
        started = time.monotonic()
        n = 0
        try:
            for frame in self.container.decode(self.stream):
                if stop.is_set():
                    return
                t = float(frame.time) if frame.time is not None else n / self.fps
                first_pts = t if first_pts is None else first_pts
                stream_s = t - first_pts
                if self.source.realtime and self.source.kind == "file":
                    wait = started + stream_s - time.monotonic()
                    if wait > 0 and stop.wait(wait):
                        return
                n += 1
                yield Frame(frame.to_ndarray(format="rgb24"), stream_s, time.time())
        except _AV_ERRORS:
            return

    def close(self) -> None:
        self.container.close()


def read_stream(
    source: Source,
    stop: threading.Event,
    on_event: Callable[[StreamEvent], None],
    timeout_s: float = 5.0,
) -> Iterator[Frame]:
    """Frames from `source` until `stop` is set or a file ends. The first open failing raises
    StreamError; a network source or device lost later is opened again with backoff, each attempt's
    outcome reported to `on_event` ("lost" once, then "reconnected" with the new frame rate)."""
    connection = Connection(source, timeout_s)
    on_event(StreamEvent("connected", f"{source.display}: {connection.fps:g} fps", connection.fps))
    while True:
        try:
            yield from connection.frames(stop)
        finally:
            connection.close()
        if stop.is_set():
            return
        if source.ends:
            on_event(StreamEvent("ended", f"{source.display}: end of file"))
            return
        on_event(StreamEvent("lost", f"{source.display}: the stream dropped; reconnecting"))
        delay = BACKOFF_S[0]
        while True:
            if stop.wait(delay):
                return
            try:
                connection = Connection(source, timeout_s)
            except StreamError as exc:
                delay = min(delay * 2, BACKOFF_S[1])
                on_event(StreamEvent("retry", f"{exc}; next try in {delay:g} s"))
                continue
            on_event(StreamEvent("reconnected", f"{source.display}: {connection.fps:g} fps", connection.fps))
            break
