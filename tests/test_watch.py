"""`panda watch` and the live window on a real local stream: a publisher process sends MPEG-TS (H.264)
over TCP in real time (`python -m panda_edge.video.publish`), as a camera would."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import panda_edge
from panda_edge.cli.main import app
from panda_edge.optional import has_llama_cpp

pytestmark = pytest.mark.skipif(
    not has_llama_cpp(), reason="llama-cpp-python is not installed (pip install 'panda-edge[llama]')"
)
runner = CliRunner()
QUESTION = "Which direction does the square move?"
FPS = 8  # the toy videos' rate: 16 frames, 2 s each
WINDOW_S = 2.0


@pytest.fixture(scope="module")
def bundle(f32_bundle: Path) -> Path:
    """The tiny bundle with its f32 GGUF (every test here asks for f32)."""
    return f32_bundle


@pytest.fixture(scope="module")
def runtime(bundle: Path):
    from panda_edge.runtime.options import RuntimeOptions

    with RuntimeOptions(gguf_type="f32", kv_type="f32", n_batch=32).open(bundle) as rt:
        yield rt


@pytest.fixture(scope="module")
def two_videos(runtime, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two toy videos of one size whose answers to QUESTION differ."""
    import av

    from panda_edge.toyworld.writer import generate

    directory = tmp_path_factory.mktemp("toy")
    generate(directory, videos=6, seed=3, heldout_fraction=0.5, workers=1)
    by_size: dict[tuple[int, int], list[tuple[Path, str]]] = {}
    for path in sorted((directory / "videos").glob("*.mp4")):
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            size = (stream.width, stream.height)
        answer = runtime.answer(path, QUESTION, max_new_tokens=8).text
        for other, other_answer in by_size.get(size, []):
            if other_answer != answer:
                return other, path
        by_size.setdefault(size, []).append((path, answer))
    raise AssertionError("no two toy videos of one size answer differently")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def publisher(port: int, *videos: Path, loop: bool = True) -> Iterator[subprocess.Popen]:
    """`python -m panda_edge.video.publish` listening on `port` (one viewer) in its own process."""
    process = start_publisher(port, *videos, loop=loop)
    try:
        yield process
    finally:
        stop_publisher(process)


def start_publisher(port: int, *videos: Path, loop: bool = True, every: int = 1) -> subprocess.Popen:
    src = str(Path(panda_edge.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "panda_edge.video.publish", f"tcp://127.0.0.1:{port}?listen=1"]
    command += [str(v) for v in videos] + (["--loop"] if loop else []) + ["--every", str(every)]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None and "publishing" in process.stderr.readline()
    time.sleep(0.2)  # from the line to its accept()
    return process


def stop_publisher(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


def live_window(runtime, port: int, events: list | None = None):
    from panda_edge.runtime.live import LiveWindow
    from panda_edge.video.stream import Source

    return LiveWindow(
        runtime,
        Source.parse(f"tcp://127.0.0.1:{port}"),
        WINDOW_S,
        0.25,
        on_event=None if events is None else events.append,
    )


# --- (a) an answer is the runtime's answer for exactly its window's frames ----------------------------


def test_an_answer_is_the_runtimes_answer_for_the_frames_of_its_window(runtime, two_videos) -> None:
    port = free_port()
    answers = []
    with publisher(port, two_videos[0]), live_window(runtime, port) as live:
        first = live.wait_window(timeout=20)
        assert first is not None and len(first.frames) == WINDOW_S * FPS and first.fps == FPS
        while len({a.window.index for a in answers}) < 3:
            live.wait_window(answers[-1].window.index if answers else -1, timeout=20)
            answers.append(live.ask(QUESTION, max_new_tokens=8))
            answers.append(live.ask("What color is the ring?", max_new_tokens=8))
        stats = live.stats()
    assert stats["windows"] >= 3 and stats["frames_in"] > WINDOW_S * FPS and stats["answers"] == len(answers)
    for live_answer in answers:
        window = live_answer.window
        # the prefix was ready: the question fed only its own tokens
        assert live_answer.answer.prefix == "memory" and "vision" not in live_answer.answer.timings_s
        assert window.stream_s[1] - window.stream_s[0] == pytest.approx(WINDOW_S - 1 / FPS)
        described = live_answer.to_dict()["window"]
        assert described["index"] == window.index and described["age_s"] >= 0
        again = runtime.chat_frames(window.frames, fps=window.fps).ask(live_answer.question, max_new_tokens=8)
        assert again.tokens == live_answer.answer.tokens, live_answer.to_dict()


def test_a_stream_that_sends_every_second_frame_is_windowed_at_the_rate_it_delivers(
    runtime, two_videos
) -> None:
    """Every second frame of an 8 fps video sent, with its own timestamp (as a camera in low light): a
    window is still the last 2 s, 8 frames at 4 fps, and its answer is the runtime's for those frames
    at that rate. (FFmpeg's probe reads 4 fps from MPEG-TS timestamps too, so the window's own
    measured rate and the stream's agree here.)"""
    port = free_port()
    process = start_publisher(port, two_videos[0], every=2)
    try:
        with live_window(runtime, port) as live:
            window = live.wait_window(timeout=20)
            window = live.wait_window(window.index, timeout=20)  # one whose frames all came live
            answer = live.ask(QUESTION, max_new_tokens=8)
    finally:
        stop_publisher(process)
    window = answer.window
    assert window.fps == FPS / 2 and len(window.frames) == WINDOW_S * FPS / 2
    assert window.stream_s[1] - window.stream_s[0] == pytest.approx(WINDOW_S - 2 / FPS)
    again = runtime.chat_frames(window.frames, fps=FPS / 2).ask(QUESTION, max_new_tokens=8)
    assert again.tokens == answer.answer.tokens


# --- (b) a change event when the stream shows something else ---------------------------------------


def test_a_stream_of_two_videos_gives_a_change_event_with_the_second_ones_answer(
    runtime, bundle: Path, two_videos, tmp_path: Path
) -> None:
    first, second = two_videos
    port = free_port()
    lines = tmp_path / "events.jsonl"
    with publisher(port, first, second, loop=False):
        result = runner.invoke(
            app,
            [
                "watch",
                f"tcp://127.0.0.1:{port}",
                "--bundle",
                str(bundle),
                "--gguf-type",
                "f32",
                "--kv-type",
                "f32",
                "--question",
                QUESTION,
                "--window",
                str(WINDOW_S),
                "--every",
                "0.25",
                "--duration",
                "6",
                "--json",
                str(lines),
                "--save-windows",
                str(tmp_path / "windows"),
                "--max-new-tokens",
                "8",
            ],
        )
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in lines.read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "connected" and kinds[-1] == "summary" and "lost" in kinds  # the publisher ended
    answers = [e for e in events if e["event"] in ("answer", "change")]
    assert answers[0]["event"] == "answer" and answers[0]["window"]["stream_s"][0] == 0
    assert answers[0]["answer"] == runtime.answer(first, QUESTION, max_new_tokens=8).text
    expected = runtime.answer(second, QUESTION, max_new_tokens=8).text
    assert expected != answers[0]["answer"]
    # the window that holds the second video alone: its answer is the second video's
    last = [e for e in answers if e["window"]["stream_s"][0] >= WINDOW_S - 1e-6]
    assert last and last[-1]["event"] == "change" and last[-1]["answer"] == expected, answers
    for event in answers:
        saved = np.load(tmp_path / "windows" / f"window-{event['window']['index']}.npz")
        frames = list(saved["frames"])
        assert len(frames) == event["window"]["frames"]
        again = runtime.chat_frames(frames, fps=float(saved["fps"])).ask(QUESTION, max_new_tokens=8)
        assert again.text == event["answer"]
    summary = events[-1]
    assert summary["windows"] >= 2 and summary["answers"] >= len(answers)


# --- (c) a publisher that dies and comes back -------------------------------------------------------


def test_a_stream_that_drops_is_reconnected_and_answers_go_on(runtime, two_videos) -> None:
    port = free_port()
    events: list = []
    process = start_publisher(port, two_videos[0])
    try:
        with live_window(runtime, port, events) as live:
            before = live.wait_window(timeout=20)
            assert before is not None
            stop_publisher(process)
            wait_for(lambda: any(e.kind == "lost" for e in events), "the loss to be seen")
            process = start_publisher(port, two_videos[0])
            wait_for(lambda: any(e.kind == "reconnected" for e in events), "a reconnection")
            restarted = time.time()
            after = live.wait_window(before.index, timeout=20)
            while after is not None and after.captured[0] < restarted - 0.5:  # a window of the new connection
                after = live.wait_window(after.index, timeout=20)
            assert after is not None
            answer = live.ask(QUESTION, max_new_tokens=8)
            stats = live.stats()
    finally:
        stop_publisher(process)
    assert answer.window.index >= after.index and answer.answer.prefix == "memory"
    assert stats["reconnects"] == 1 and stats["state"] == "live"
    assert [e.kind for e in events][:2] == ["connected", "lost"]


def test_ctrl_c_ends_a_watch_with_its_summary(bundle: Path, two_videos, tmp_path: Path) -> None:
    port = free_port()
    src = str(Path(panda_edge.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "panda_edge.cli.main", "watch", f"tcp://127.0.0.1:{port}"]
    command += ["--bundle", str(bundle), "--gguf-type", "f32", "--question", QUESTION, "--window", "1"]
    with publisher(port, two_videos[0]):
        watch = subprocess.Popen(
            [*command, "--json", "-"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
        )
        assert watch.stdout is not None
        lines = [watch.stdout.readline(), watch.stdout.readline()]  # connected, the first answer
        watch.send_signal(signal.SIGINT)
        rest, _ = watch.communicate(timeout=30)
    events = [json.loads(line) for line in [*lines, *rest.splitlines()]]
    assert watch.returncode == 0
    assert [e["event"] for e in events[:2]] == ["connected", "answer"] and events[-1]["event"] == "summary"
    assert events[-1]["state"] == "stopped" and events[-1]["answers"] >= 1


def wait_for(condition, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.05)


# --- (d) a file source ends the run ------------------------------------------------------------------


def test_a_file_source_ends_the_run_with_a_summary(runtime, bundle: Path, two_videos) -> None:
    video = two_videos[0]
    result = runner.invoke(
        app,
        [
            "watch",
            str(video),
            "--bundle",
            str(bundle),
            "--gguf-type",
            "f32",
            "--kv-type",
            "f32",
            "--question",
            QUESTION,
            "--window",
            str(WINDOW_S),
            "--json",
            "-",
        ],
    )
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["event"] for e in events] == ["connected", "answer", "ended", "summary"] or [
        e["event"] for e in events
    ] == ["connected", "ended", "answer", "summary"]
    answer = next(e for e in events if e["event"] == "answer")
    assert answer["window"]["frames"] == WINDOW_S * FPS
    assert answer["answer"] == runtime.answer(video, QUESTION, max_new_tokens=64).text
    summary = events[-1]
    assert summary["frames_in"] == WINDOW_S * FPS and summary["windows"] == 1 and summary["answers"] == 1
    assert summary["state"] == "ended"


def test_a_source_that_cannot_be_opened_is_one_line_and_exit_2(bundle: Path, tmp_path: Path) -> None:
    for source, message in (
        (str(tmp_path / "missing.mp4"), "no such file or device"),
        (f"tcp://127.0.0.1:{free_port()}", "cannot open it"),
        ("gopher://camera", "not a stream URL"),
    ):
        result = runner.invoke(app, ["watch", source, "--bundle", str(bundle), "--gguf-type", "f32"])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
    for spec, message in (("door", "give NAME=SOURCE"), ("door=gopher://x", "not a stream URL")):
        result = runner.invoke(app, ["serve", "--bundle", str(bundle), "--port", "0", "--stream", spec])
        assert result.exit_code == 2 and message in result.output, result.output
        assert "loading" not in result.output  # refused before the model loads


def test_stdin_questions_are_answered_against_the_newest_window(bundle: Path, two_videos) -> None:
    video = two_videos[1]
    result = runner.invoke(
        app,
        ["watch", str(video), "--bundle", str(bundle), "--gguf-type", "f32", "--realtime", "--window", "1"],
        input=f"{QUESTION}\n",
    )
    assert result.exit_code == 0, result.output
    assert f"{QUESTION} -> " in result.stdout and "[window " in result.stdout


def test_a_cameras_password_is_left_out_of_what_is_shown() -> None:
    from panda_edge.video.stream import Source

    assert Source.parse("rtsp://admin:secret@cam.local:554/h264").display == "rtsp://***@cam.local:554/h264"
    assert Source.parse("rtsp://cam.local/a@b").display == "rtsp://cam.local/a@b"


def test_stopping_waits_for_the_window_being_encoded(runtime, two_videos) -> None:
    """The caller closes the runtime after stop(): a window still in vision or prefill then would run
    on freed llama.cpp contexts (a crash), so stop() returns only once it is done."""
    from panda_edge.runtime.live import LiveWindow
    from panda_edge.video.stream import Source

    started, encode = threading.Event(), runtime.encode_frames

    def slow_encode(frames):
        started.set()
        time.sleep(2.0)
        return encode(frames)

    runtime.encode_frames = slow_encode
    try:
        live = LiveWindow(runtime, Source.parse(str(two_videos[0])), WINDOW_S, 0.25).start()
        assert started.wait(20)
        live.stop()
        assert not any(t.is_alive() for t in threading.enumerate() if t.name == "panda-refresh")
        assert live.windows == 1  # the window in progress was finished, not abandoned
    finally:
        del runtime.encode_frames


def test_the_window_threads_do_not_outlive_it(runtime, two_videos) -> None:
    from panda_edge.runtime.live import LiveWindow
    from panda_edge.video.stream import Source

    before = threading.active_count()
    with LiveWindow(runtime, Source.parse(str(two_videos[0])), WINDOW_S, 0.25) as live:
        live.wait_window(timeout=20)
    assert threading.active_count() == before


# --- (e) panda serve: stream://NAME ----------------------------------------------------------------


def test_serve_answers_stream_urls_against_the_streams_newest_window(
    bundle: Path, two_videos, tmp_path: Path
) -> None:
    """A stream played from a file keeps its last window once the file ends: the HTTP answers (and a
    follow-up) are the runtime's for that window's frames; windows stay out of the server's --cache
    (no later run asks for them again)."""
    openai = pytest.importorskip("openai", reason="the test speaks to the server with openai")
    pytest.importorskip("starlette", reason="panda serve needs the serve extra")
    import urllib.request

    from panda_edge.runtime.options import RuntimeOptions
    from panda_edge.serving.app import ServeOptions, create_app
    from panda_edge.serving.server import running_server
    from panda_edge.serving.streams import LiveStreams

    cache = tmp_path / "cache"
    options = RuntimeOptions(gguf_type="f32", kv_type="f32", n_batch=32, prefix_cache=cache)
    runtime = options.open(bundle)
    streams = LiveStreams(runtime, {"door": str(two_videos[1])}, window_s=1.0, every_s=0.25)
    streams.start()
    app = create_app(runtime, ServeOptions(model_name="tiny"), streams)
    live = streams.windows["door"]
    with running_server(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        first = live.wait_window(timeout=20)
        assert first is not None
        while not live.finished:
            live.wait_window(live.newest.index, timeout=5)
        video = {"type": "video_url", "video_url": {"url": "stream://door"}}

        def messages(*turns: tuple[str, str | None]) -> list[dict]:
            out: list[dict] = []
            for i, (q, a) in enumerate(turns):
                out.append({"role": "user", "content": [video, {"type": "text", "text": q}] if i == 0 else q})
                if a is not None:
                    out.append({"role": "assistant", "content": a})
            return out

        reply = client.chat.completions.create(
            model="tiny", messages=messages((QUESTION, None)), max_tokens=8
        )
        text = reply.choices[0].message.content
        follow = client.chat.completions.create(
            model="tiny", messages=messages((QUESTION, text), ("What color is the ring?", None)), max_tokens=8
        )
        listed = json.loads(urllib.request.urlopen(url + "/v1/streams").read())["data"]
        scraped = urllib.request.urlopen(url + "/metrics").read().decode()
        with pytest.raises(openai.NotFoundError, match="no stream 'window'"):
            client.chat.completions.create(
                model="tiny",
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "video_url", "video_url": {"url": "stream://window"}},
                            {"type": "text", "text": "q?"},
                        ],
                    }
                ],
            )
        cached_windows = list(cache.glob("**/*.kv"))  # before this test's own frames request below
        window = live.newest  # the file ended: the window stays; the server closes the runtime on exit
        chat = runtime.chat_frames(window.frames, fps=window.fps)
        expected = [chat.ask(QUESTION, max_new_tokens=8).text]
        expected.append(chat.ask("What color is the ring?", max_new_tokens=8).text)
    usage = reply.usage.model_dump()
    assert usage["video_window"]["stream"] == "door" and usage["video_window"]["index"] == window.index
    assert usage["video_prefix"] == "memory" and usage["video_frames"] == window.video.frames
    # the follow-up's replayed turn was computed: only the window's prefix counts as cached
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    assert follow.usage.model_dump()["prompt_tokens_details"]["cached_tokens"] == cached > 0
    assert [text, follow.choices[0].message.content] == expected
    assert not cached_windows
    [door] = listed
    assert door["name"] == "door" and door["fps"] == FPS and door["state"] == "ended"
    assert door["frames_in"] == 2 * FPS and door["window_age_s"] >= 0 and door["frames_dropped"] == 0
    assert 'panda_stream_frames_total{stream="door"} 16.0' in scraped
    assert "panda_stream_window_age_seconds" in scraped


# --- panda bench watch, small (its speeds are recorded, never asserted) --------------------------------


def test_bench_watch_through_the_cli() -> None:
    args = ["bench", "watch", "--seconds", "5", "--window", "1", "--fps", "10", "--size", "160x120"]
    result = runner.invoke(app, [*args, "--json", "-"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["stream"]["fps"] == 10 and report["frames_in"] > 0 and report["windows"] >= 2
    assert report["ttft_ms"]["ready_window"]["n"] >= 1 and report["ttft_ms"]["cold"]["n"] >= 1
    assert report["memory_mb"]["end"]["VmHWM"] >= report["memory_mb"]["loaded"]["VmRSS"]
    refused = runner.invoke(app, ["bench", "watch", "--model", "huge"])
    assert refused.exit_code == 2 and "unknown model 'huge'" in refused.output
