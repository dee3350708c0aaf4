"""`panda bench watch`: a live window on a real-time local stream, as `panda watch` keeps it.

A publisher process (`python -m panda_edge.video.publish`) sends a test pattern (default 640x360 at
25 fps, H.264 in MPEG-TS over TCP) in real time. A measuring process (so its peak memory is the live
window's alone, not the exporter's) opens the bundle and a `LiveWindow` on the stream, and asks a
question about once a second: most against the ready window (what `panda watch` does), every fourth
cold (the prefix forgotten, the same window's frames encoded and prefilled at the question, as a
runtime that re-encodes per query would). Recorded: frames ingested and dropped per second, the
window refresh period, question-to-first-token p50/p95 for both, the windows' ages when answered,
and VmHWM / VmRSS (a quarter of the way in and at the end: growth over the run).
"""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from panda_edge.backends import DEFAULT_EVERY_S, DEFAULT_WINDOW_S
from panda_edge.errors import PandaError
from panda_edge.host import cpu_info, load_average
from panda_edge.timing import quotient, significant

QUESTION = "What color is the square?"


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return significant(ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))])


def _memory() -> dict[str, int]:
    """VmHWM and VmRSS of this process, MB."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            found[key] = round(int(value.split()[0]) / 1024)
    return found


def measure(url: str, bundle: str, seconds: float, window_s: float, every_s: float) -> dict[str, Any]:
    """The measuring process's part (module docstring)."""
    from panda_edge.runtime.live import LiveWindow
    from panda_edge.runtime.options import RuntimeOptions
    from panda_edge.video.stream import Source

    events: list[str] = []
    with RuntimeOptions().open(bundle) as runtime:
        loaded = _memory()
        live = LiveWindow(
            runtime,
            Source.parse(url),
            window_s,
            every_s,
            on_event=lambda e: events.append(e.kind),
            slots=(runtime.open_slot(), runtime.open_slot()),  # the runtime's own slot: the cold questions
        )
        ready: list[float] = []
        warm: list[float] = []
        cold: list[float] = []
        ages: list[float] = []
        window_timings: list[dict[str, float]] = []
        quarter: dict[str, int] = {}
        with live:
            first = live.wait_window(timeout=window_s + 60)
            if first is None:
                raise PandaError(f"no window of {url} was ready")
            start = time.monotonic()
            done = threading.Event()

            def follow() -> None:
                seen = first.index
                while not done.is_set():
                    window = live.wait_window(seen, timeout=0.5)
                    if window is not None:
                        seen = window.index
                        ready.append(window.ready_at)
                        window_timings.append(window.timings_s)

            tracker = threading.Thread(target=follow, daemon=True)
            tracker.start()
            n = 0
            while time.monotonic() - start < seconds:
                if not quarter and time.monotonic() - start > seconds / 4:
                    quarter = _memory()
                asked = time.perf_counter()
                first_token: list[float] = []

                def on_text(piece: str, first_token: list[float] = first_token) -> None:
                    if not first_token:
                        first_token.append(time.perf_counter())

                if n % 4 == 3:
                    window = live.newest
                    runtime.prefix.forget()
                    asked = time.perf_counter()
                    video = runtime.frames_input(window.frames, window.fps, max_frames=len(window.frames))
                    runtime.chat_input(video).ask(QUESTION, 8, on_text=on_text)
                    cold.append((first_token[0] if first_token else time.perf_counter()) - asked)
                else:
                    answer = live.ask(QUESTION, 8, on_text=on_text)
                    warm.append((first_token[0] if first_token else time.perf_counter()) - asked)
                    ages.append(answer.asked_at - answer.window.captured[1])
                n += 1
                time.sleep(max(0.0, 1.0 - (time.perf_counter() - asked)))
            stats = live.stats()
            done.set()
            tracker.join(timeout=5)
        end = _memory()
    periods = [b - a for a, b in itertools.pairwise(ready)]
    running = stats["running_s"]

    def median_ms(key: str) -> float | None:
        values = [t[key] * 1e3 for t in window_timings if key in t]
        return significant(statistics.median(values)) if values else None

    return {
        "stream": {"fps": stats["fps"], "window_s": window_s, "every_s": every_s, "events": events},
        "frames_in_per_s": quotient(stats["frames_in"], running),
        "frames_dropped_per_s": quotient(stats["frames_dropped"], running),
        "frames_in": stats["frames_in"],
        "frames_dropped": stats["frames_dropped"],
        "windows": stats["windows"],
        "refresh_period_s": {"p50": _percentile(periods, 0.5), "p95": _percentile(periods, 0.95)},
        "window_ms": {k: median_ms(k) for k in ("preprocess", "vision", "prefill")},
        "ttft_ms": {
            "ready_window": {
                "p50": _percentile([t * 1e3 for t in warm], 0.5),
                "p95": _percentile([t * 1e3 for t in warm], 0.95),
                "n": len(warm),
            },
            "cold": {
                "p50": _percentile([t * 1e3 for t in cold], 0.5),
                "p95": _percentile([t * 1e3 for t in cold], 0.95),
                "n": len(cold),
            },
        },
        "window_age_at_question_s": {"p50": _percentile(ages, 0.5), "p95": _percentile(ages, 0.95)},
        "memory_mb": {"loaded": loaded, "quarter": quarter, "end": end},
        "rss_growth_mb": None if not quarter else end["VmRSS"] - quarter["VmRSS"],
        "running_s": significant(running),
    }


def bench_watch(
    model: str = "tiny",
    seconds: float = 60.0,
    window_s: float = DEFAULT_WINDOW_S,
    every_s: float = DEFAULT_EVERY_S,
    fps: float = 25.0,
    size: tuple[int, int] = (640, 360),
    bundle: Path | None = None,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The whole benchmark; without `bundle`, `model` (tiny or bench) is exported first."""
    from panda_edge.bench.e2e import check_model
    from panda_edge.bench.serve import export_model
    from panda_edge.optional import llama_cpp

    if bundle is None:
        check_model(model)
    llama_cpp()
    step = on_step or (lambda _: None)
    name = model if bundle is None else str(bundle)
    with tempfile.TemporaryDirectory(prefix="panda-bench-watch-") as work:
        if bundle is None:
            bundle = export_model(model, Path(work), step)
        port = _free_port()
        url = f"tcp://127.0.0.1:{port}"
        publish = [sys.executable, "-m", "panda_edge.video.publish", url + "?listen=1"]
        publisher = subprocess.Popen(
            [*publish, "--fps", str(fps), "--size", f"{size[0]}x{size[1]}"],
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert publisher.stderr is not None
            publisher.stderr.readline()
            step(f"watching a {size[0]}x{size[1]} {fps:g} fps stream for {seconds:g} s ({model})")
            args = [url, str(bundle), str(seconds), str(window_s), str(every_s)]
            child = subprocess.run(
                [sys.executable, "-m", "panda_edge.bench.watch", *args],
                capture_output=True,
                text=True,
                timeout=seconds + 600,
            )
        finally:
            publisher.kill()
            publisher.wait(timeout=30)
        if child.returncode != 0:
            raise PandaError(f"the measuring process failed: {child.stderr[-2000:]}")
        measured = json.loads(child.stdout)
    return {
        "machine": {"cpu": cpu_info(), "load_average_after": load_average()},
        "model": name,
        "source": {"kind": "MPEG-TS over TCP, H.264 test pattern", "fps": fps, "size": list(size)},
        "question": QUESTION,
        **measured,
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":  # the measuring process
    url, bundle, seconds, window_s, every_s = sys.argv[1:6]
    print(json.dumps(measure(url, bundle, float(seconds), float(window_s), float(every_s))))
