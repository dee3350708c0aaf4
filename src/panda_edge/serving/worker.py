"""One decoder, one thread: requests answered in arrival order from a bounded queue.

llama.cpp holds one sequence, so answers cannot interleave; what a server can do is keep the video
prefix for the next request (VideoRuntime keeps the last video's prefix resident, `--cache` keeps
every video's on disk) and keep the last conversation, so a follow-up that repeats its turns goes
on from the KV cache. Events for each request (text pieces, then the end or an error) cross to the
event loop through `loop.call_soon_threadsafe`. A request whose client has gone is skipped while it
waits, and stopped after its next token while it runs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from panda_edge.errors import PandaError, VideoError
from panda_edge.runtime.llm.decoder import ContextFull
from panda_edge.runtime.video_runtime import Answer, VideoChat, VideoInput, VideoRuntime
from panda_edge.serving.media import MediaFile
from panda_edge.serving.metrics import ServerMetrics
from panda_edge.serving.protocol import ApiError, ChatRequest, bad_request
from panda_edge.serving.streams import StreamVideo

log = logging.getLogger(__name__)


class AnswerText:
    """Answer text as a client sees it, piece by piece: no surrounding whitespace (as `panda run` prints
    it) and cut before the first stop string; what could still become one is held back."""

    def __init__(self, stops: tuple[str, ...] = ()) -> None:
        self.stops = stops
        self.text = ""
        self.sent = 0
        self.stopped = False

    def push(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.text += piece
        if self.sent == 0:
            self.text = self.text.lstrip()
        cut = min((i for s in self.stops if (i := self.text.find(s)) >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self.text = self.text[:cut].rstrip()
            return self._release(len(self.text))
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        return self._release(len(self.text[: len(self.text) - hold].rstrip()))

    def finish(self) -> str:
        return "" if self.stopped else self._release(len(self.text.rstrip()))

    def _release(self, end: int) -> str:
        if end <= self.sent:
            return ""
        piece, self.sent = self.text[self.sent : end], end
        return piece

    @property
    def content(self) -> str:
        return self.text[: self.sent]


@dataclass
class Job:
    """One request on its way through the queue; `events` receives ("text", str), then ("done", dict)
    or ("error", ApiError). Its video is a file (`MediaFile`), frames already decoded and sampled
    (`VideoInput`), or a live stream's newest window (`StreamVideo`)."""

    request: ChatRequest
    video: MediaFile | VideoInput | StreamVideo
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrived: float = field(default_factory=time.perf_counter)

    def send(self, kind: str, value: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


class AnswerWorker:
    """The decoder thread and its queue (at most `max_queue` requests waiting beside the one running)."""

    def __init__(self, runtime: VideoRuntime, max_queue: int, metrics: ServerMetrics) -> None:
        self.runtime = runtime
        self.max_queue = max_queue
        self.metrics = metrics
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._pending = 0  # submitted and not finished: waiting, and the one running
        self._running = False
        self._lock = threading.Lock()
        self._live: VideoChat | None = None  # the last conversation, resident in the KV cache
        self._seconds_per_job = 1.0  # running mean, for Retry-After
        self._thread = threading.Thread(target=self._run, name="panda-decoder", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue `job`, or raise a 503 ApiError with Retry-After when `max_queue` wait already."""
        with self._lock:
            waiting = self._pending - (1 if self._running else 0)
            if self._pending > self.max_queue:  # the running one and max_queue waiting
                retry = max(1, math.ceil(self._seconds_per_job * (waiting + 1)))
                message = f"the server is busy ({waiting} requests waiting); retry later"
                raise ApiError(503, message, None, "queue_full", {"Retry-After": str(retry)})
            self._pending += 1
            self._show_depth()
        self._queue.put(job)

    @property
    def waiting(self) -> int:
        """Requests submitted and not yet started."""
        return self._pending - (1 if self._running else 0)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _show_depth(self) -> None:
        self.metrics.queue_depth.set(self.waiting)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            with self._lock:
                self._running = True
                self._show_depth()
            start = time.perf_counter()
            try:
                if not job.cancelled.is_set():
                    self._answer(job)
            except Exception as exc:  # a bug of ours, not the client's: logged; the thread goes on
                self._live = None
                log.exception("answering failed")
                failed = f"the server failed answering ({type(exc).__name__})"
                job.send("error", ApiError(500, failed, None, "internal_error"))
            finally:
                if isinstance(job.video, MediaFile):
                    job.video.close()
                with self._lock:
                    self._pending -= 1
                    self._running = False
                    self._show_depth()
            self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * (time.perf_counter() - start)

    def _answer(self, job: Job) -> None:
        request = job.request
        window = None
        try:
            text = AnswerText(request.stop)
            first_token: list[float] = []

            def on_text(piece: str) -> None:
                if not first_token:
                    first_token.append(time.perf_counter())
                if released := text.push(piece):
                    job.send("text", released)

            should_stop = lambda: text.stopped or job.cancelled.is_set()  # noqa: E731
            if isinstance(job.video, StreamVideo):  # the newest window; its turns replayed on it
                seen = job.video.live.ask(
                    request.question,
                    request.max_tokens,
                    request.sampling,
                    on_text,
                    turns=list(request.turns),
                    timeout=5,  # a window was ready when the request came (LiveStreams.video)
                    should_stop=should_stop,
                )
                chat, answer, how, cached = None, seen.answer, None, None
                window = {"stream": job.video.name, **seen.window.describe(seen.asked_at)}
                frames_seen = seen.window.video.frames  # sampled from the window's frames
            else:
                chat, how, cached = self._conversation(job)
                answer = chat.ask(
                    request.question, request.max_tokens, request.sampling, on_text, should_stop
                )
        except ContextFull as exc:
            self._live = None
            job.send("error", bad_request(str(exc), code="context_length_exceeded"))
            return
        except VideoError as exc:
            self._live = None
            job.send("error", bad_request(str(exc), code="invalid_video"))
            return
        except PandaError as exc:
            self._live = None
            job.send("error", bad_request(str(exc)))
            return
        if released := text.finish():
            job.send("text", released)
        if chat is not None:  # a client repeats what it was sent
            self._live = chat if text.content == answer.text else None
        done = self._summary(job, answer, how or answer.prefix, cached, text, first_token)
        if window is not None:
            done["usage"]["video_window"] = window
            done["usage"]["video_frames"] = frames_seen
        job.send("done", done)

    def _conversation(self, job: Job) -> tuple[VideoChat, str | None, int | None]:
        """The live conversation when the request continues it, else a new one with the request's
        earlier turns replayed; how its video prefix was had and the positions reused (None: the
        answer's own account)."""
        request, live, video = job.request, self._live, job.video
        sha = video.key if isinstance(video, VideoInput) else None
        if live is not None and live.turns == list(request.turns):
            sha = sha or self.runtime.video_key(video.path)
            if sha == live.video.key and self.runtime.prefix.resident == sha:
                return live, None, None
        self._live = None
        if isinstance(video, VideoInput):
            chat = VideoChat(self.runtime, video)
        else:
            chat = self.runtime.chat(video.path, sha)
        if not request.turns:
            return chat, None, None
        how, cached = chat.replay(request.turns)
        return chat, how, cached

    def _summary(
        self,
        job: Job,
        answer: Answer,
        how: str,
        cached: int | None,
        text: AnswerText,
        first_token: list[float],
    ) -> dict[str, Any]:
        finish = "length" if answer.finish_reason == "length" and not text.stopped else "stop"
        metrics = self.metrics
        metrics.prefix.labels(how).inc()
        metrics.prompt_tokens.inc(answer.prompt_tokens)
        metrics.completion_tokens.inc(len(answer.tokens))
        if first_token:
            metrics.ttft.observe(first_token[0] - job.arrived)
        if answer.decode_tok_s is not None:
            metrics.decode.observe(answer.decode_tok_s)
        cached_tokens = answer.cached_tokens if cached is None else cached
        return {
            "content": text.content,
            "finish_reason": finish,
            "usage": {
                "prompt_tokens": answer.prompt_tokens,
                "completion_tokens": len(answer.tokens),
                "total_tokens": answer.prompt_tokens + len(answer.tokens),
                "prompt_tokens_details": {"cached_tokens": cached_tokens},
                "video_prefix": how,
                "video_frames": job.video.frames if isinstance(job.video, VideoInput) else None,
            },
        }
