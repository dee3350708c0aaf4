"""`panda serve --stream NAME=SOURCE`: live windows a request names as `stream://NAME`.

Each stream is a `runtime.live.LiveWindow` on the server's runtime: two more llama.cpp contexts on the
loaded weights (the server's own context stays for file requests), its own ingest and refresh threads.
A request whose video part is `stream://NAME` is answered by the decoder thread against that stream's
newest ready window (a follow-up repeats its turns, replayed on that window). `GET /v1/streams` lists
each stream's state; `/metrics` has them as `panda_stream_*`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from panda_edge.backends import DEFAULT_EVERY_S, DEFAULT_WINDOW_S
from panda_edge.errors import PandaError
from panda_edge.runtime.live import LiveWindow
from panda_edge.runtime.video_runtime import VideoRuntime
from panda_edge.serving.protocol import ApiError
from panda_edge.video.stream import Source, StreamEvent

log = logging.getLogger(__name__)
SCHEME = "stream://"


@dataclass(frozen=True)
class StreamVideo:
    """A request's video: the newest window of the stream `name`."""

    name: str
    live: LiveWindow


def parse_streams(specs: list[str]) -> dict[str, str]:
    """`NAME=SOURCE` options as {name: source}; PandaError for a malformed or repeated name, StreamError
    for a source that is no URL, device or file (said before the model loads; a camera is opened after)."""
    streams: dict[str, str] = {}
    for spec in specs:
        name, sep, source = spec.partition("=")
        name = name.strip()
        if not sep or not name or not source.strip() or "/" in name:
            raise PandaError(f"--stream {spec!r}: give NAME=SOURCE, e.g. door=rtsp://camera.local/stream")
        if name in streams:
            raise PandaError(f"--stream {name}: given twice")
        Source.parse(source.strip(), realtime=True)
        streams[name] = source.strip()
    return streams


class LiveStreams:
    """The server's named live windows."""

    def __init__(
        self,
        runtime: VideoRuntime,
        sources: dict[str, str],
        window_s: float = DEFAULT_WINDOW_S,
        every_s: float = DEFAULT_EVERY_S,
    ) -> None:
        """Sources are parsed here (StreamError for a bad one); a file plays at its own rate."""
        self.windows: dict[str, LiveWindow] = {}
        for name, source in sources.items():
            self.windows[name] = LiveWindow(
                runtime,
                Source.parse(source, realtime=True),
                window_s,
                every_s,
                on_event=self._logger(name),
                slots=(runtime.open_slot(), runtime.open_slot()),
            )

    @staticmethod
    def _logger(name: str):
        def on_event(event: StreamEvent) -> None:
            level = logging.WARNING if event.kind in ("lost", "retry") else logging.INFO
            log.log(level, "stream %s: %s", name, event.message)

        return on_event

    def start(self) -> None:
        """Open every stream (StreamError for one that cannot be opened at all)."""
        try:
            for live in self.windows.values():
                live.start()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for live in self.windows.values():
            live.stop()

    def video(self, url: str) -> StreamVideo:
        """The stream a `stream://NAME` URL names, or a 404 naming the streams there are."""
        name = url[len(SCHEME) :].strip("/")
        if name not in self.windows:
            there = ", ".join(sorted(self.windows)) or "none (start the server with --stream NAME=SOURCE)"
            raise ApiError(404, f"no stream '{name}'; streams: {there}", "messages", "stream_not_found")
        live = self.windows[name]
        if live.error is not None:
            raise ApiError(503, f"stream '{name}' failed: {live.error}", "messages", "stream_failed")
        if live.newest is None:  # starting, or reconnected and not a window long yet: not the queue's wait
            stats = live.stats()
            retry = str(max(1, round(live.window_s)))
            message = f"stream '{name}' has no window ready yet ({stats['state']}); retry in {retry} s"
            raise ApiError(503, message, "messages", "stream_not_ready", {"Retry-After": retry})
        return StreamVideo(name, live)

    def describe(self) -> list[dict[str, Any]]:
        """Each stream's frame rate, window age, frames in and dropped, windows, reconnects and state."""
        return [{"name": name, **live.stats()} for name, live in self.windows.items()]

    def collector(self) -> Any:
        """A Prometheus collector reading the streams' counters at each scrape."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        streams = self

        class Collector:
            def collect(self):
                stats = streams.describe()
                families = {
                    "frames_in": CounterMetricFamily(
                        "panda_stream_frames", "Frames read from the stream.", labels=["stream"]
                    ),
                    "frames_dropped": CounterMetricFamily(
                        "panda_stream_frames_dropped",
                        "Frames that left the window before any encoded window had them.",
                        labels=["stream"],
                    ),
                    "windows": CounterMetricFamily(
                        "panda_stream_windows", "Windows encoded and made ready.", labels=["stream"]
                    ),
                    "reconnects": CounterMetricFamily(
                        "panda_stream_reconnects", "Times the stream was opened again.", labels=["stream"]
                    ),
                    "window_age_s": GaugeMetricFamily(
                        "panda_stream_window_age_seconds",
                        "Age of the newest ready window's last frame.",
                        labels=["stream"],
                    ),
                }
                for s in stats:
                    for key, family in families.items():
                        if s[key] is not None:
                            family.add_metric([s["name"]], s[key])
                yield from families.values()

        return Collector()
