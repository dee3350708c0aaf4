"""`panda watch`: questions about a live stream, answered against its newest window."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

from panda_edge.backends import CPU, DEFAULT_BACKEND, DEFAULT_EVERY_S, DEFAULT_KV_CACHE, DEFAULT_WINDOW_S
from panda_edge.cli._common import (
    BundleOpt,
    CheckpointOpt,
    CtxOpt,
    GgufOpt,
    GpuLayersOpt,
    KvCacheAlias,
    KvTypeOpt,
    LoraOpt,
    PrecisionOpt,
    Threads,
    VisionDeviceOpt,
    VisionOpt,
    handle_errors,
    json_to_stdout,
    note,
    out,
    runtime_options,
    spinner,
    warn,
)
from panda_edge.errors import PandaError

SourceArg = Annotated[
    str,
    typer.Argument(
        help="rtsp://, rtmp://, http(s):// (MJPEG, HLS), udp:// or tcp:// (MPEG-TS) URL, a V4L2 device "
        "(/dev/video0) or a video file."
    ),
]


@handle_errors
def watch(
    source: SourceArg,
    bundle: BundleOpt,
    question: Annotated[
        list[str] | None,
        typer.Option("--question", help="A standing question, asked again on each new window (repeatable)."),
    ] = None,
    window: Annotated[
        float, typer.Option("--window", min=0.1, help="Seconds of the stream one window holds.")
    ] = DEFAULT_WINDOW_S,
    every: Annotated[
        float,
        typer.Option("--every", min=0.0, help="Refresh the window at most this often (seconds; 0: always)."),
    ] = DEFAULT_EVERY_S,
    realtime: Annotated[
        bool,
        typer.Option("--realtime", help="Play a file source at its own frame rate (default: as decoded)."),
    ] = False,
    duration: Annotated[
        float | None, typer.Option("--duration", min=0.0, help="Stop after this many seconds.")
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Write answers and events as JSON lines to this file ('-': stdout)."),
    ] = None,
    save_windows: Annotated[
        Path | None,
        typer.Option(
            "--save-windows",
            help="Save the decoded frames of each window an answer saw (window-N.npz: frames, fps), "
            "to check an answer against the same frames later.",
        ),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Longest answer.")] = 64,
    vision: VisionOpt = DEFAULT_BACKEND,
    precision: PrecisionOpt = None,
    gguf_type: GgufOpt = None,
    n_gpu_layers: GpuLayersOpt = 0,
    threads: Threads = None,
    n_ctx: CtxOpt = None,
    kv_type: KvTypeOpt = DEFAULT_KV_CACHE,
    kv_cache: KvCacheAlias = None,
    checkpoint: CheckpointOpt = None,
    device: VisionDeviceOpt = CPU,
    lora: LoraOpt = None,
) -> None:
    """Watch SOURCE and answer questions about its latest --window seconds.

    A background thread keeps the newest window's visual prefix ready in llama.cpp's KV cache (two
    contexts, swapped when the next window is ready), so a question waits only for its own tokens.
    The window's frames are sampled by the official rule, as a video of that length would be.
    Standing --question answers are printed when they change (and first); each stdin line is a
    question answered once. Frames arriving while the model is busy are kept only as the window needs
    (the others are counted as dropped); a dropped network stream is reconnected with backoff. A
    file's end, --duration or Ctrl-C ends the run with a summary (exit 0). Exit 2 for a source that
    cannot be opened or a bad bundle.
    """
    from panda_edge.runtime.live import LiveWindow
    from panda_edge.video.stream import Source

    questions = [q.strip() for q in question or [] if q.strip()]
    parsed = Source.parse(source, realtime)
    options = runtime_options(
        vision,
        precision,
        gguf_type,
        threads,
        n_gpu_layers,
        n_ctx,
        kv_type,
        kv_cache,
        checkpoint=checkpoint,
        lora=lora,
        device=device,
    )
    sink = _Sink(json_out, save_windows)
    try:
        with spinner("loading the bundle"):
            runtime = options.open(bundle)
        with runtime:
            live = LiveWindow(runtime, parsed, window, every, on_event=sink.stream_event)
            with spinner(f"opening {source}"):
                live.start()
            try:
                with _terminate_as_interrupt():
                    _follow(live, questions, max_new_tokens, duration, sink)
            except KeyboardInterrupt:
                pass
            finally:
                live.stop()
            stats = live.stats()
            sink.summary(stats)
            if live.error is not None:
                raise live.error if isinstance(live.error, PandaError) else PandaError(str(live.error))
    finally:
        sink.close()


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a service manager stopping it) ends the run as Ctrl-C does: with the summary."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _follow(
    live: Any, questions: list[str], max_new_tokens: int, duration: float | None, sink: _Sink
) -> None:
    """Re-ask the standing questions on each new window until the source ends or `duration` passes;
    stdin questions are answered in their own thread meanwhile."""
    pending = threading.Semaphore(1)  # held while a stdin question is answered: the run ends after it
    if not sys.stdin.closed and sys.stdin.readable():
        threading.Thread(target=_ask_stdin, args=(live, max_new_tokens, sink, pending), daemon=True).start()
    deadline = None if duration is None else time.monotonic() + duration
    last: dict[str, str] = {}
    seen = -1
    while deadline is None or time.monotonic() < deadline:
        window = live.wait_window(seen, timeout=0.25)
        if window is None:
            if live.finished:
                break
            continue
        seen = window.index
        for q in questions:
            answer = live.ask(q, max_new_tokens)
            seen = max(seen, answer.window.index)
            if last.get(q) != answer.text:
                sink.answer("change" if q in last else "answer", answer, last.get(q))
                last[q] = answer.text
    if pending.acquire(timeout=60):
        pending.release()


def _ask_stdin(live: Any, max_new_tokens: int, sink: _Sink, pending: threading.Semaphore) -> None:
    for line in sys.stdin:
        q = line.strip()
        if not q:
            continue
        with pending:
            try:
                sink.answer("reply", live.ask(q, max_new_tokens, timeout=30))
            except PandaError as exc:
                warn(str(exc))


class _Sink:
    """Where answers and events go: lines on stdout (events on stderr), or JSON lines with --json."""

    def __init__(self, json_out: Path | None, save_windows: Path | None) -> None:
        self.lock = threading.Lock()
        self.json: TextIO | None = None
        if json_out is not None:
            self.json = sys.stdout if json_to_stdout(json_out) else json_out.open("w")
        self.save_windows = save_windows
        if save_windows is not None:
            save_windows.mkdir(parents=True, exist_ok=True)
        self._saved: set[int] = set()

    def _line(self, record: dict[str, Any]) -> None:
        assert self.json is not None
        self.json.write(json.dumps(record, default=str) + "\n")
        self.json.flush()

    def answer(self, kind: str, answer: Any, previous: str | None = None) -> None:
        """An answer: `answer` (a standing question's first), `change`, or `reply` (a stdin question)."""
        self._save(answer.window)
        with self.lock:
            if self.json is not None:
                record = {"event": kind, **answer.to_dict()}
                if kind == "change":
                    record["previous"] = previous
                self._line(record)
                if self.json is sys.stdout:
                    return
            seen = answer.window.describe(answer.asked_at)
            where = f"[window {seen['index']}, {seen['age_s']:.1f} s old]"
            change = f" (was: {previous})" if kind == "change" else ""
            out.print(f"{where} {answer.question} -> {answer.text}{change}", markup=False, highlight=False)

    def stream_event(self, event: Any) -> None:
        with self.lock:
            if self.json is not None:
                self._line({"event": event.kind, "message": event.message, "at": time.time()})
        if event.kind in ("lost", "retry"):
            warn(event.message)
        else:
            note(event.message)

    def summary(self, stats: dict[str, Any]) -> None:
        if self.json is not None:
            self._line({"event": "summary", **stats})
        note(
            f"watched {stats['running_s']:.1f} s: {stats['windows']} windows, "
            f"{stats['frames_in']} frames in, "
            f"{stats['frames_dropped']} dropped, {stats['answers']} answers, {stats['reconnects']} reconnects"
        )

    def _save(self, window: Any) -> None:
        """The window's frames as window-N.npz (once, whichever thread's answer saw it first)."""
        if self.save_windows is None:
            return
        with self.lock:
            if window.index in self._saved:
                return
            self._saved.add(window.index)
        import numpy as np

        from panda_edge.fileio import atomic_path

        with atomic_path(self.save_windows / f"window-{window.index}.npz") as tmp, tmp.open("wb") as file:
            np.savez(file, frames=np.stack(window.frames), fps=window.fps)

    def close(self) -> None:
        if self.json is not None and self.json is not sys.stdout:
            self.json.close()
            self.json = None
