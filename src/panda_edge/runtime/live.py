"""A live window: the latest W seconds of a stream, its visual prefix kept ready in llama.cpp's KV cache.

Three kinds of thread share a `LiveWindow`:

- ingest reads frames (`video.stream.read_stream`) into a deque holding the latest W seconds by the
  frames' stream times (W x fps frames; at most 1.5 x W x the stream's nominal rate, should it send
  faster than it says): memory holds one window's decoded frames, and ingest never waits for the
  model. A frame that leaves the deque (or is cleared by a reconnect: frames before a gap are not
  one video with those after it) without having been in any window the model encoded is counted as
  dropped.
- refresh takes the newest complete window (W seconds of frames; at a file's end, what there is) at
  most every `every_s` seconds, samples its frames by the official rule
  (`runtime.frames_input(frames, fps=stream_fps)`, `video.frames.sample_frames`: a window is a
  video of W seconds at the stream's rate, the rate measured from its frames' stream times, so a
  camera that sends fewer frames than it announces is sampled by what it sent), runs the vision
  backend and prefills the prefix into the back buffer, then swaps it to the front.
- askers (`ask`) answer against the front buffer's window: its prefix is resident, so a question
  costs its own tokens, as a follow-up does.

Double buffering: two llama.cpp contexts on one loaded model (`runtime.slot` and
`runtime.open_slot()`), each with its own `PrefixState`; one more KV cache of n_ctx positions is the
memory cost, not another copy of the GGUF. Refresh writes only the back buffer, waiting for a question
that began on it before the last swap; a question takes the front buffer, waiting only for an earlier
question on it, never for a window in progress.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from panda_edge.backends import DEFAULT_EVERY_S, DEFAULT_WINDOW_S
from panda_edge.errors import PandaError
from panda_edge.runtime.video_runtime import Answer, Slot, VideoInput, VideoRuntime
from panda_edge.sampling import GREEDY, Sampling
from panda_edge.video.stream import FALLBACK_FPS, Frame, Source, StreamEvent, read_stream

log = logging.getLogger(__name__)

_EPS_S = 1e-6  # stream times are float seconds from integer timestamps


@dataclass(frozen=True)
class Window:
    """One window the model encoded: its decoded RGB frames (all of them, as read, in order), the
    stream's rate, when its first and last frame were in the stream and read, and its input."""

    index: int
    frames: list[np.ndarray]
    fps: float
    stream_s: tuple[float, float]  # first and last frame's time in the stream (since the connection)
    captured: tuple[float, float]  # first and last frame's wall-clock read time (time.time())
    video: VideoInput
    ready_at: float  # when its prefix was ready (time.time())
    timings_s: dict[str, float] = field(default_factory=dict)  # preprocess, vision, prefill

    def describe(self, at: float | None = None) -> dict[str, Any]:
        """For an answer or event: the window's frames, span and age at `at` (default now)."""
        at = time.time() if at is None else at
        return {
            "index": self.index,
            "frames": len(self.frames),
            "fps": round(self.fps, 3),
            "stream_s": [round(t, 3) for t in self.stream_s],
            "captured": [_iso(t) for t in self.captured],
            "age_s": round(at - self.captured[1], 3),
        }


@dataclass(frozen=True)
class LiveAnswer:
    """An answer and the window it saw (its age when the answer began)."""

    question: str
    answer: Answer
    window: Window
    asked_at: float

    @property
    def text(self) -> str:
        return self.answer.text

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            **self.answer.to_dict(),
            "window": self.window.describe(self.asked_at),
        }


class _Buffer:
    """One slot of the double buffer: the window whose prefix it holds, and whether it is in use."""

    def __init__(self, slot: Slot) -> None:
        self.slot = slot
        self.window: Window | None = None
        self.busy = False


class LiveWindow:
    """The newest window of `source`, ready for questions (module docstring). Use as a context manager,
    or `start()` then `stop()`."""

    def __init__(
        self,
        runtime: VideoRuntime,
        source: Source,
        window_s: float = DEFAULT_WINDOW_S,
        every_s: float = DEFAULT_EVERY_S,
        on_event: Callable[[StreamEvent], None] | None = None,
        slots: tuple[Slot, Slot] | None = None,
    ) -> None:
        """`slots`: the two contexts of the double buffer (default: the runtime's own and one more; a
        server gives two more, keeping its own for file requests)."""
        if not (window_s > 0 and math.isfinite(window_s)):
            raise PandaError(f"the window must be a positive number of seconds, not {window_s}")
        if every_s < 0:
            raise PandaError(f"the refresh period cannot be negative ({every_s} s)")
        self.runtime = runtime
        self.source = source
        self.window_s = window_s
        self.every_s = every_s
        self._on_event = on_event or (lambda event: None)
        self._cv = threading.Condition()
        self._stop = threading.Event()
        front, back = slots or (runtime.slot, runtime.open_slot())
        self._front = _Buffer(front)
        self._back = _Buffer(back)
        self._frames: deque[tuple[int, Frame]] = deque()
        self._seq = 0  # frames read so far (the next frame's number)
        self._seen = -1  # the newest frame number any encoded window had
        self._complete = False  # a frame left the deque since it was (re)started: it holds a whole window
        self.fps: float | None = None
        self.frames_in = 0
        self.dropped = 0
        self.windows = 0
        self.answers = 0
        self.reconnects = 0
        self.state = "starting"  # starting, live, reconnecting, ended, stopped, failed
        self.error: BaseException | None = None
        self.started_at = time.time()
        self._ingest_done = False
        self.finished = False  # the source ended and its last window is ready (or failed)
        self._threads: list[threading.Thread] = []
        # seconds between consecutive windows being ready (the last 1,000: a run may last for days)
        self._refresh_s: deque[float] = deque(maxlen=1000)

    # --- lifetime --------------------------------------------------------------------------------

    def start(self) -> LiveWindow:
        """Open the source (StreamError when it cannot be opened at all) and start reading and refreshing."""
        for target, name in ((self._ingest, "panda-ingest"), (self._refresh, "panda-refresh")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        with self._cv:  # a wrong URL or a missing device: an error now, not a retry loop
            while self.state == "starting" and self.error is None:
                self._cv.wait()
            error = self.error
        if error is not None:
            self.stop()
            raise error
        return self

    def stop(self) -> None:
        """Stop reading and refreshing, and return once nothing runs on the runtime's contexts any more:
        the window being encoded is finished (its prefill can take seconds at full size on a CPU) and
        a question under way answered, so the runtime may be closed after this. Ingest ends at its
        next frame or its network read's timeout; it touches no context, so it is not waited for
        longer than that."""
        self._stop.set()
        with self._cv:
            if self.state not in ("ended", "failed"):
                self.state = "stopped"
            self._cv.notify_all()
        ingest, *refresh = self._threads or [None]
        for thread in refresh:
            thread.join()
        if ingest is not None:
            ingest.join(timeout=10)
        with self._cv:
            while self._front.busy or self._back.busy:
                self._cv.wait()

    def __enter__(self) -> LiveWindow:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- questions -------------------------------------------------------------------------------

    @property
    def newest(self) -> Window | None:
        """The newest ready window (whose prefix is in the front buffer), if any."""
        return self._front.window

    def wait_window(self, after: int = -1, timeout: float | None = None) -> Window | None:
        """The newest ready window once its index is above `after`; None at the timeout, or when no
        newer window will come (the source ended, the window stopped or failed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while True:
                window = self._front.window
                if window is not None and window.index > after:
                    return window
                if self.finished or self._stop.is_set():
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cv.wait(left)

    def ask(
        self,
        question: str,
        max_new_tokens: int = 64,
        sampling: Sampling = GREEDY,
        on_text: Callable[[str], None] | None = None,
        turns: list[tuple[str, str]] | None = None,
        timeout: float | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> LiveAnswer:
        """Answer `question` against the newest ready window (waiting for the first one, at most
        `timeout`), after `turns` (earlier question/answer pairs a client repeats) when given;
        `should_stop` as `VideoChat.ask`'s."""
        buffer, window = self._take_front(timeout)
        try:
            asked_at = time.time()
            chat = self.runtime.chat_input(window.video, buffer.slot)
            cached = chat.replay(turns)[1] if turns else None
            answer = chat.ask(question, max_new_tokens, sampling, on_text, should_stop)
            if cached is not None:  # the window's prefix was there; the replayed turns were not
                answer = replace(answer, cached_tokens=cached)
        finally:
            with self._cv:
                buffer.busy = False
                self._cv.notify_all()
        with self._cv:
            self.answers += 1
        return LiveAnswer(question, answer, window, asked_at)

    def _take_front(self, timeout: float | None) -> tuple[_Buffer, Window]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while True:
                buffer = self._front
                if buffer.window is not None and not buffer.busy:
                    buffer.busy = True
                    return buffer, buffer.window
                if self.error is not None:
                    raise PandaError(f"the live window failed: {self.error}")
                if self._stop.is_set():
                    raise PandaError(f"{self.source.display}: the live window has stopped")
                if buffer.window is None and (self.finished or self._stop.is_set()):
                    raise PandaError(f"{self.source.display}: no window of it was ready")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise PandaError(f"{self.source.display}: no window ready after {timeout:g} s")
                self._cv.wait(left)

    # --- reporting -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Frames in and dropped, windows, answers, reconnects, the stream's rate and state, the newest
        window's age and the median seconds between windows."""
        with self._cv:
            window = self._front.window
            periods = sorted(self._refresh_s)
            return {
                "source": self.source.display,
                "state": self.state,
                "fps": None if self.fps is None else round(self.fps, 3),
                "window_s": self.window_s,
                "frames_in": self.frames_in,
                "frames_dropped": self.dropped,
                "windows": self.windows,
                "answers": self.answers,
                "reconnects": self.reconnects,
                "window_age_s": None if window is None else round(time.time() - window.captured[1], 3),
                "refresh_period_s": None if not periods else round(periods[len(periods) // 2], 3),
                "running_s": round(time.time() - self.started_at, 3),
            }

    # --- threads ---------------------------------------------------------------------------------

    def _event(self, event: StreamEvent) -> None:
        with self._cv:
            if event.fps is not None:
                self.fps = event.fps
            if event.kind in ("connected", "reconnected"):
                self.state = "live"
                if event.kind == "reconnected":  # the frames before the gap are not one video with these
                    self.reconnects += 1
                    self._clear()
            elif event.kind in ("lost", "retry"):
                self.state = "reconnecting"  # the last frames still make a window meanwhile
            elif event.kind == "ended":
                self.state = "ended"
            self._cv.notify_all()
        log.info("%s", event.message)
        self._on_event(event)

    def _clear(self) -> None:
        """Empty the deque (under the lock), counting the frames no window had."""
        self.dropped += sum(1 for seq, _ in self._frames if seq > self._seen)
        self._frames.clear()
        self._complete = False

    def _ingest(self) -> None:
        try:
            for frame in read_stream(self.source, self._stop, self._event):
                with self._cv:
                    self._add(frame)
                    self._cv.notify_all()
        except Exception as exc:  # reported to askers and the caller
            with self._cv:
                self.error = exc
                self.state = "failed"
        finally:
            with self._cv:
                self._ingest_done = True
                self._cv.notify_all()

    def _add(self, frame: Frame) -> None:
        """Append `frame` (under the lock) and keep the latest W seconds: the frames less than W seconds
        older than it by their stream times, at most 1.5 x W x the stream's nominal rate (memory's
        bound when a stream sends faster than it says)."""
        last = self._frames[-1][1] if self._frames else None
        if last is not None and (last.rgb.shape != frame.rgb.shape or frame.stream_s < last.stream_s):
            self._clear()  # a new size, or time going back: a new window
        self._frames.append((self._seq, frame))
        self._seq += 1
        self.frames_in += 1
        cap = max(2, math.ceil(1.5 * self.window_s * self._nominal_fps()))
        while (
            len(self._frames) > cap or frame.stream_s - self._frames[0][1].stream_s > self.window_s - _EPS_S
        ):
            seq, _ = self._frames.popleft()
            self._complete = True
            if seq > self._seen:
                self.dropped += 1

    def _window_ready(self) -> bool:
        """Whether the deque holds a whole window: a frame has left it since it was (re)started, or its
        frames span W seconds less one frame interval."""
        if self._complete:
            return True
        span = self._frames[-1][1].stream_s - self._frames[0][1].stream_s if self._frames else 0.0
        return span >= self.window_s - 1 / self._nominal_fps() - _EPS_S

    def _window_fps(self, frames: list[tuple[int, Frame]]) -> float:
        """The window's frame rate by its frames' stream times (a camera may send fewer frames than it
        says), the stream's nominal rate when they cannot tell."""
        span = frames[-1][1].stream_s - frames[0][1].stream_s
        return (len(frames) - 1) / span if len(frames) > 1 and span > 0 else self._nominal_fps()

    def _nominal_fps(self) -> float:
        return self.fps or FALLBACK_FPS

    def _refresh(self) -> None:
        last_ready = None
        try:
            while True:
                taken = self._next_window(last_ready)
                if taken is None:
                    break
                window = self._encode(*taken)
                if last_ready is not None:
                    with self._cv:
                        self._refresh_s.append(window.ready_at - last_ready)
                last_ready = window.ready_at
        except Exception as exc:  # reported to askers and the caller
            log.error("the live window failed: %s", exc)
            self._stop.set()  # no window will be made again: stop reading too
            with self._cv:
                self.error = exc
                self.state = "failed"
        finally:
            with self._cv:
                self.finished = True
                self._cv.notify_all()

    def _next_window(self, last_ready: float | None) -> tuple[list[tuple[int, Frame]], float] | None:
        """The frames of the next window to encode, or None when no more will come."""
        with self._cv:
            while True:
                if self._stop.is_set() or self.error is not None:
                    return None
                new = bool(self._frames) and self._frames[-1][0] > self._seen
                full = self._window_ready()
                wait = 0.0 if last_ready is None else last_ready + self.every_s - time.time()
                if new and (self._ingest_done or (full and wait <= 0)):
                    frames = list(self._frames)
                    self._seen = frames[-1][0]
                    return frames, self._window_fps(frames)
                if self._ingest_done and not new:
                    return None
                self._cv.wait(wait if new and full and wait > 0 else 0.5)

    def _encode(self, frames: list[tuple[int, Frame]], fps: float) -> Window:
        """Vision and prefill of `frames` into the back buffer, then the swap."""
        with self._cv:
            index = self.windows
        rgb = [frame.rgb for _, frame in frames]
        video = self.runtime.frames_input(rgb, fps, f"window {index}", max_frames=len(rgb))
        with self._cv:
            while self._back.busy:  # a question that began on it before the last swap
                self._cv.wait()
            back = self._back
            back.busy = True
        try:
            _, timings = back.slot.prefix.enter(video.key, video.visual, video.label, disk=False)
        finally:
            with self._cv:
                back.busy = False
                self._cv.notify_all()
        first, last = frames[0][1], frames[-1][1]
        window = Window(
            index,
            rgb,
            fps,
            (first.stream_s, last.stream_s),
            (first.captured, last.captured),
            video,
            time.time(),
            timings,
        )
        with self._cv:
            back.window = window
            self._front, self._back = back, self._front
            self._back.window = None  # its frames go (a question still on it holds its own reference)
            self.windows += 1
            self._cv.notify_all()
        return window


def _iso(t: float) -> str:
    """A wall-clock time as ISO 8601 UTC with milliseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
