"""`panda bench serve`: `panda serve` under 1, 2, 4 and 8 concurrent local clients.

The server runs as users run it (`panda serve` in its own process, on 127.0.0.1, a free port); the
clients are threads speaking the official `openai` package, streaming, so time to first token is what
a client sees (queue wait included). Each client asks about a pool of toy videos in turn, a new
conversation each time. Measured: TTFT p50/p95, completed requests per minute, failures; the prefix
reuse (a second request about the same video vs the first); and with a small `--max-queue`, that
overload answers 503 and nothing else.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from panda_edge.errors import PandaError
from panda_edge.host import cpu_info, load_average
from panda_edge.timing import quotient, significant

CONCURRENCY = (1, 2, 4, 8)
QUESTION = "What color is the ring?"
VIDEOS = 4


@contextmanager
def served(bundle: Path, media: Path, *args: str) -> Iterator[tuple[str, int]]:
    """`panda serve` on a free local port; yields its base URL and process id."""
    import urllib.error
    import urllib.request

    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
    command = [sys.executable, "-m", "panda_edge.cli.main", "serve", "--bundle", str(bundle), "--port", "0"]
    process = subprocess.Popen([*command, "--media-dir", str(media), *args], stderr=log)
    try:
        deadline = time.monotonic() + 300
        while not (found := re.search(r"http://[\d.]+:\d+", Path(log.name).read_text())):
            if process.poll() is not None or time.monotonic() > deadline:
                raise PandaError(f"panda serve did not start: {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.1)
        url = found.group(0)
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=5).close()
                break
            except (urllib.error.URLError, ConnectionError):
                if process.poll() is not None:
                    raise PandaError(f"panda serve stopped: {Path(log.name).read_text()[-2000:]}") from None
                time.sleep(0.1)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()
        Path(log.name).unlink(missing_ok=True)


def _ask(client: Any, model: str, video: Path, max_tokens: int) -> dict[str, Any]:
    """One streamed request: its TTFT, total time and usage, or the error it got."""
    import openai

    messages = [
        {
            "role": "user",
            "content": [
                {"type": "video_url", "video_url": {"url": video.as_uri()}},
                {"type": "text", "text": QUESTION},
            ],
        }
    ]
    start = time.perf_counter()
    first, usage = None, None
    try:
        stream = client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content is not None:
                first = time.perf_counter()
            if chunk.usage is not None:
                usage = chunk.usage.model_dump()
    except openai.APIStatusError as exc:
        return {"status": exc.status_code, "error": str(exc)[:200]}
    except openai.APIError as exc:
        return {"status": None, "error": str(exc)[:200]}
    end = time.perf_counter()
    return {"status": 200, "ttft_s": (first or end) - start, "total_s": end - start, "usage": usage}


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _level(
    url: str, model: str, videos: list[Path], clients: int, requests: int, seconds: float, max_tokens: int
) -> dict[str, Any]:
    """`clients` threads, each sending up to `requests` requests (or until `seconds` pass)."""
    import openai

    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client_loop(index: int) -> None:
        client = openai.OpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600)
        for i in range(requests):
            if time.monotonic() > deadline:
                return
            result = _ask(client, model, videos[(index + i) % len(videos)], max_tokens)
            with lock:
                results.append(result)

    start = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    ok = [r for r in results if r["status"] == 200]
    ttft = [r["ttft_s"] * 1e3 for r in ok]
    prefix: dict[str, int] = {}
    for r in ok:
        how = (r["usage"] or {}).get("video_prefix", "unknown")
        prefix[how] = prefix.get(how, 0) + 1
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    return {
        "clients": clients,
        "requests": len(results),
        "completed": len(ok),
        "failures": len(results) - len(ok),
        "statuses": statuses,
        "ttft_p50_ms": significant(_percentile(ttft, 0.5)) if ttft else None,
        "ttft_p95_ms": significant(_percentile(ttft, 0.95)) if ttft else None,
        "completed_per_minute": quotient(len(ok) * 60, wall),
        "wall_s": significant(wall),
        "video_prefix": prefix,
        "errors": sorted({r["error"] for r in results if "error" in r})[:3],
    }


def _prefix_reuse(url: str, model: str, videos: list[Path], warm_up: Path, max_tokens: int) -> dict[str, Any]:
    """TTFT of a first request about each video (prefix computed) and of a second one (reused), after
    one request about another video (the connection, the server's first-request work)."""
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600)
    _ask(client, model, warm_up, max_tokens)
    first, second = [], []
    for video in videos:
        a, b = _ask(client, model, video, max_tokens), _ask(client, model, video, max_tokens)
        if a["status"] != 200 or b["status"] != 200:
            raise PandaError(f"prefix reuse run failed: {a.get('error') or b.get('error')}")
        first.append(a["ttft_s"])
        second.append(b["ttft_s"])
    first_ms, second_ms = statistics.median(first) * 1e3, statistics.median(second) * 1e3
    return {
        "videos": len(videos),
        "ttft_first_ms": significant(first_ms),
        "ttft_same_video_ms": significant(second_ms),
        "same_video_vs_first": quotient(second_ms, first_ms),
    }


def export_model(model: str, work_dir: Path, step: Callable[[str], None]) -> Path:
    """A bundle of `model` (ONNX + q8_0 GGUF): the embedded tiny model, or bench e2e's full-size STAB
    with the 0.54B random Llama, where the video prefix costs what it costs at scale."""
    from panda_edge.bench.e2e import build_bench_checkpoint
    from panda_edge.export.llm_gguf.export_gguf import export_gguf
    from panda_edge.export.stab_onnx.export_onnx import export_bundle

    checkpoint: str | Path = "tiny"
    if model == "bench":
        step("building the bench checkpoint (full-size STAB + 0.54B random Llama)")
        checkpoint = build_bench_checkpoint(work_dir / "bench-checkpoint")
    step(f"exporting {model} (ONNX + q8_0 GGUF)")
    bundle = work_dir / model
    export_bundle(checkpoint, bundle)
    export_gguf(checkpoint, bundle, "q8_0")
    return bundle


def bench_serve(
    bundle: Path | None = None,
    model: str = "tiny",
    requests: int = 6,
    seconds: float = 120.0,
    max_tokens: int = 16,
    small_queue: int = 1,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The whole benchmark; without `bundle`, `model` is exported first (`bench`: the prefix reuse
    only, where a new video's prefix costs what it costs at scale)."""
    from panda_edge.bench.e2e import check_model
    from panda_edge.optional import llama_cpp, require
    from panda_edge.toyworld.writer import generate

    if bundle is None:
        check_model(model)
    llama_cpp()
    require("openai", "dev")
    require("uvicorn", "serve")
    step = on_step or (lambda _: None)
    with tempfile.TemporaryDirectory(prefix="panda-bench-serve-") as work:
        work_dir = Path(work)
        if bundle is None:
            bundle = export_model(model, work_dir, step)
        step(f"writing {VIDEOS + 4} toy videos")
        generate(work_dir / "toy", videos=VIDEOS + 4, seed=5, heldout_fraction=0.0)
        pool = sorted((work_dir / "toy" / "videos").iterdir())
        name = bundle.name  # the model id `panda serve` serves it under
        result: dict[str, Any] = {
            "machine": {"cpu": cpu_info(), "load_average_before": load_average()},
            "bundle": str(bundle),
            "model": name,
            "max_tokens": max_tokens,
            "question": QUESTION,
        }
        # the bench Llama was configured with 2,048 positions; a square video's 2,184 visual tokens need
        # more, which llama.cpp gives (the released 7B has 4,096)
        context = ["--n-ctx", "4096"] if model == "bench" else []
        with served(bundle, work_dir / "toy", *context) as (url, _pid):
            step("prefix reuse: first vs second request about each video")
            result["prefix_reuse"] = _prefix_reuse(url, name, pool[VIDEOS:], pool[0], max_tokens)
            if model == "bench":  # at this size every new video costs seconds: reuse is the question
                return result
            levels = []
            for clients in CONCURRENCY:
                step(f"{clients} concurrent clients, {requests} requests each")
                levels.append(_level(url, name, pool[:VIDEOS], clients, requests, seconds, max_tokens))
            result["concurrency"] = levels
        result["machine"]["load_average_after"] = load_average()
        with served(bundle, work_dir / "toy", *context, "--max-queue", str(small_queue)) as (url, _pid):
            clients = CONCURRENCY[-1]
            step(f"overload: {clients} clients against --max-queue {small_queue}")
            result["overload"] = {
                "max_queue": small_queue,
                **_level(url, name, pool[:VIDEOS], clients, requests, seconds, max_tokens),
            }
    return result
