"""`panda serve` as clients use it: a real server on a free local port, spoken to by the official
`openai` package (and by raw HTTP where a client could send what `openai` never would)."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from panda_edge.cli.main import app as cli_app
from panda_edge.optional import has_llama_cpp
from panda_edge.serving.worker import AnswerText

openai = pytest.importorskip("openai", reason="the tests speak to the server with openai (the dev extra)")
pytest.importorskip("starlette", reason="panda serve needs the serve extra")
pytestmark = pytest.mark.skipif(
    not has_llama_cpp(), reason="llama-cpp-python is not installed (pip install 'panda-edge[llama]')"
)
KEY = "test-key"
runner = CliRunner()


@pytest.fixture(scope="module")
def random_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with random weights: its answers run long (`</s>` is one token of 512), which the
    stop, cancel and queue tests need; the trained one says one word and stops."""
    from panda_edge.export.llm_gguf.export_gguf import export_gguf
    from panda_edge.export.stab_onnx.export_onnx import export_bundle

    directory = tmp_path_factory.mktemp("serve") / "random"
    export_bundle(tiny_checkpoint, directory)
    export_gguf(tiny_checkpoint, directory, "q8_0")
    return directory


@contextmanager
def in_process_server(bundle: Path, media: Path, **options) -> Iterator[str]:
    from panda_edge.runtime.options import RuntimeOptions
    from panda_edge.serving.app import ServeOptions, create_app
    from panda_edge.serving.server import running_server

    app = create_app(
        RuntimeOptions().open(bundle), ServeOptions(model_name="random", media_dir=media, **options)
    )
    with running_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def random_client(random_bundle: Path, unseen_toy: Path):
    with in_process_server(random_bundle, unseen_toy) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)


@contextmanager
def panda_serve(
    bundle: Path, media: Path, tmp: Path, *args: str, port: str = "0"
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`panda serve --port 0` in its own process; yields its base URL and the process. TMPDIR is
    `tmp/tmp`, so a test can see the temporary files it leaves."""
    (tmp / "tmp").mkdir(parents=True, exist_ok=True)
    log = tmp / "serve.log"
    env = {**os.environ, "TMPDIR": str(tmp / "tmp"), "PANDA_API_KEY": KEY}
    command = [
        sys.executable,
        "-m",
        "panda_edge.cli.main",
        "serve",
        "--bundle",
        str(bundle),
        "--port",
        port,
    ]
    with log.open("w") as stderr:
        process = subprocess.Popen([*command, "--media-dir", str(media), *args], stderr=stderr, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (found := re.search(r"http://[\d.]+:\d+", log.read_text())):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        url = found.group(0)
        while True:  # listening before loading; answering once /health does
            try:
                urllib.request.urlopen(url + "/health", timeout=5).close()
                break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, log.read_text()
                time.sleep(0.1)
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, unseen_toy: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("server")
    with panda_serve(tiny_bundle, unseen_toy, tmp, "--max-request-mb", "2") as (url, process):
        yield url, process, tmp


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=120)


def heldout(unseen_toy: Path, n: int = 10) -> list[dict]:
    """One question per held-out video, the first `n` videos."""
    seen, questions = set(), []
    for entry in json.loads((unseen_toy / "heldout.json").read_text()):
        if entry["video"] not in seen:
            seen.add(entry["video"])
            questions.append(entry)
    return questions[:n]


def video_part(path: Path) -> dict:
    return {"type": "video_url", "video_url": {"url": path.as_uri()}}


def ask(video: dict, question: str, history: tuple = ()) -> list[dict]:
    """The messages of a conversation about `video`: earlier (question, answer) turns, then `question`."""
    turns = [*history, (question, None)]
    messages: list[dict] = []
    for i, (q, a) in enumerate(turns):
        content = [video, {"type": "text", "text": q}] if i == 0 else q
        messages.append({"role": "user", "content": content})
        if a is not None:
            messages.append({"role": "assistant", "content": a})
    return messages


def stream_text(client, **request) -> tuple[str, dict]:
    text, usage = "", None
    for chunk in client.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **request
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
    return text, usage


def video_of(unseen_toy: Path, entry: dict) -> Path:
    return unseen_toy / "videos" / entry["video"]


# --- answers --------------------------------------------------------------------------------------


def test_greedy_answers_equal_panda_run_and_streaming_yields_the_same(
    client, tiny_bundle: Path, unseen_toy: Path
) -> None:
    for entry in heldout(unseen_toy):
        video = video_of(unseen_toy, entry)
        result = runner.invoke(
            cli_app,
            [
                "run",
                "--bundle",
                str(tiny_bundle),
                str(video),
                entry["question"],
                "--max-new-tokens",
                "16",
                "--json",
                "-",
            ],
        )
        assert result.exit_code == 0, result.output
        expected = json.loads(result.stdout)["answer"]
        request = {"model": "tiny", "messages": ask(video_part(video), entry["question"]), "max_tokens": 16}
        reply = client.chat.completions.create(temperature=0, **request)
        assert reply.choices[0].message.content == expected
        assert reply.choices[0].finish_reason in ("stop", "length")
        streamed, usage = stream_text(client, **request)
        assert streamed == expected
        assert usage["completion_tokens"] == reply.usage.completion_tokens


def test_the_video_prefix_is_shared_across_requests_by_content(client, unseen_toy: Path) -> None:
    first_video, other = (video_of(unseen_toy, e) for e in heldout(unseen_toy, 2))
    question = "What color is the square?"
    client.chat.completions.create(model="tiny", messages=ask(video_part(other), question), max_tokens=4)
    first = client.chat.completions.create(
        model="tiny", messages=ask(video_part(first_video), question), max_tokens=4
    )
    assert first.usage.video_prefix == "computed"
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    # a new conversation about the same video, sent as a data: URL (another file, same content)
    data = "data:video/mp4;base64," + base64.b64encode(first_video.read_bytes()).decode()
    again = client.chat.completions.create(
        model="tiny",
        messages=ask({"type": "input_video", "input_video": {"url": data}}, "Which shape is it?"),
        max_tokens=4,
    )
    assert again.usage.video_prefix == "memory"
    prefix = again.usage.prompt_tokens_details.cached_tokens
    assert 0 < prefix < again.usage.prompt_tokens
    assert first.usage.prompt_tokens - prefix < 20  # only the question's tokens were computed


def test_a_follow_up_continues_like_panda_chat(client, tiny_bundle: Path, unseen_toy: Path) -> None:
    from panda_edge.runtime.options import RuntimeOptions

    entry = heldout(unseen_toy)[3]
    video = video_of(unseen_toy, entry)
    questions = (entry["question"], "What color is it?", "How many shapes are there?")
    with RuntimeOptions().open(tiny_bundle) as runtime:
        chat = runtime.chat(video)
        expected = [chat.ask(q, 16).text for q in questions]
    history: tuple = ()
    for i, question in enumerate(questions):
        reply = client.chat.completions.create(
            model="tiny", messages=ask(video_part(video), question, history), max_tokens=16
        )
        assert reply.choices[0].message.content == expected[i]
        if i:
            assert reply.usage.video_prefix == "memory"
            assert reply.usage.prompt_tokens - reply.usage.prompt_tokens_details.cached_tokens < 20
        history = (*history, (question, expected[i]))
    # the same conversation with another earlier answer: replayed as text, not continued
    edited = ((questions[0], "a square"),)
    reply = client.chat.completions.create(
        model="tiny", messages=ask(video_part(video), questions[1], edited), max_tokens=16
    )
    assert reply.usage.video_prefix == "memory"
    assert reply.usage.prompt_tokens_details.cached_tokens < reply.usage.prompt_tokens - 10


def test_stop_strings_and_max_tokens(random_client, unseen_toy: Path) -> None:
    video = video_part(video_of(unseen_toy, heldout(unseen_toy)[0]))
    request = {
        "model": "random",
        "messages": ask(video, "What happens?"),
        "temperature": 0.8,
        "seed": 7,
        "max_tokens": 40,
    }
    full = random_client.chat.completions.create(**request)
    assert full.choices[0].finish_reason == "length" and full.usage.completion_tokens == 40
    text = full.choices[0].message.content
    assert text == random_client.chat.completions.create(**request).choices[0].message.content  # seeded
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip()
    stopped = random_client.chat.completions.create(**{**request, "stop": [stop, "never said"]})
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index(stop)].rstrip()
    assert stopped.usage.completion_tokens < 40
    streamed, _ = stream_text(random_client, **{**request, "stop": [stop]})
    assert streamed == stopped.choices[0].message.content


def test_answer_text_holds_back_what_may_become_a_stop_string() -> None:
    text = AnswerText(("STOP",))
    pieces = [text.push(p) for p in (" It", " moves", " S", "TO", "P left")]
    assert pieces == ["It", " moves", "", "", ""]
    assert text.content == "It moves" and text.stopped
    text = AnswerText(("STOP",))
    assert [text.push(p) for p in ("a ", "ST", "x ")] == ["a", "", " STx"]
    assert text.finish() == "" and text.content == "a STx"


def test_models_health_and_metrics(client, server) -> None:
    assert [m.id for m in client.models.list().data] == ["tiny"]
    url = server[0]
    assert json.loads(urllib.request.urlopen(url + "/health").read())["status"] == "ok"
    metrics = urllib.request.urlopen(url + "/metrics").read().decode()
    for name in (
        "panda_requests_total",
        "panda_time_to_first_token_seconds_bucket",
        "panda_decode_tokens_per_second_bucket",
        "panda_queue_depth",
        "panda_video_prefix_total",
    ):
        assert name in metrics


# --- bad requests ---------------------------------------------------------------------------------


def raw_post(url: str, body: bytes, key: str | None = KEY, headers: dict | None = None) -> tuple[int, dict]:
    """POST a body as any HTTP client could; (status, JSON reply). `headers` receives the reply's."""
    sent = {"Content-Type": "application/json"}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url + "/v1/chat/completions", data=body, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            reply = response.status, json.loads(response.read())
            received = response.headers
    except urllib.error.HTTPError as error:
        reply = error.code, json.loads(error.read())
        received = error.headers
    if headers is not None:
        headers.update((name.lower(), value) for name, value in received.items())
    return reply


def bad_requests(unseen_toy: Path, tmp: Path) -> list[tuple[str, int, str | None, dict | bytes]]:
    """(what, status, error code, request body) for what a client can get wrong."""
    video = video_of(unseen_toy, heldout(unseen_toy)[0])
    good = ask(video_part(video), "What color is it?")
    (tmp / "notes.txt").write_text("not a video")
    text_file = tmp / "notes.txt"
    truncated = video.read_bytes()[: video.stat().st_size // 2]
    outside = unseen_toy / ".." / tmp.name / "notes.txt"
    link = unseen_toy / "link.mp4"
    if not link.exists():
        link.symlink_to(text_file)

    def body(messages=good, **fields) -> dict:
        return {"model": "tiny", "messages": messages, **fields}

    def data_url(data: bytes, mime: str = "video/mp4") -> dict:
        return {
            "type": "video_url",
            "video_url": {"url": f"data:{mime};base64," + base64.b64encode(data).decode()},
        }

    return [
        ("not a video", 400, "invalid_video", body(ask(data_url(b"just some text"), "q?"))),
        ("truncated video", 400, "invalid_video", body(ask(data_url(truncated), "q?"))),
        ("missing file", 400, "video_not_found", body(ask(video_part(unseen_toy / "none.mp4"), "q?"))),
        (
            "outside the media dir",
            403,
            "media_path_refused",
            body(ask({"type": "video_url", "video_url": {"url": "file://" + str(outside)}}, "q?")),
        ),
        ("a link out of the media dir", 403, "media_path_refused", body(ask(video_part(link), "q?"))),
        (
            "remote URL",
            400,
            "remote_media_refused",
            body(ask({"type": "video_url", "video_url": {"url": "https://example.com/a.mp4"}}, "q?")),
        ),
        ("too large", 413, "request_too_large", body(ask(data_url(b"\0" * (3 << 20)), "q?"))),
        ("malformed JSON", 400, "invalid_json", b'{"model": "tiny", "messages": ['),
        ("no video part", 400, "missing_video", body([{"role": "user", "content": "What happens?"}])),
        (
            "two videos",
            400,
            "too_many_videos",
            body(
                [
                    {
                        "role": "user",
                        "content": [video_part(video), video_part(video), {"type": "text", "text": "q?"}],
                    }
                ]
            ),
        ),
        (
            "a video file sent as an image (a frame)",
            400,
            "invalid_video",
            body(
                [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": video.as_uri()}},
                            {"type": "text", "text": "q?"},
                        ],
                    }
                ]
            ),
        ),
        ("unknown model", 404, "model_not_found", {**body(), "model": "gpt-4o"}),
        ("no question", 400, "missing_text", body([{"role": "user", "content": [video_part(video)]}])),
        ("last message not the user's", 400, None, body([*good, {"role": "assistant", "content": "blue"}])),
        ("bad max_tokens", 400, None, body(max_tokens=0)),
        ("bad temperature", 400, None, body(temperature="hot")),
        ("n above 1", 400, None, body(n=3)),
        (
            "a data URL that is not a video",
            400,
            "invalid_video",
            body(ask(data_url(b"x", "text/plain"), "q?")),
        ),
        (
            "damaged base64",
            400,
            "invalid_video_url",
            body(ask({"type": "video_url", "video_url": {"url": "data:video/mp4;base64,@@@"}}, "q?")),
        ),
    ]


def test_each_bad_request_gets_its_status_and_error_shape(server, unseen_toy: Path, tmp_path: Path) -> None:
    url = server[0]
    for what, status, code, request in bad_requests(unseen_toy, tmp_path):
        raw = request if isinstance(request, bytes) else json.dumps(request).encode()
        got, reply = raw_post(url, raw)
        assert got == status, (what, reply)
        assert set(reply["error"]) == {"message", "type", "param", "code"}, what
        assert reply["error"]["message"], what
        if code is not None:
            assert reply["error"]["code"] == code, (what, reply)
    video = video_part(video_of(unseen_toy, heldout(unseen_toy)[0]))
    good = json.dumps(
        {"model": "tiny", "messages": ask(video, "What color is it?"), "max_tokens": 4}
    ).encode()
    assert raw_post(url, good, key=None)[0] == 401
    assert raw_post(url, good, key="wrong")[0] == 401
    assert raw_post(url, good)[0] == 200


def test_the_openai_client_sees_the_errors_as_its_own_types(client, unseen_toy: Path) -> None:
    video = video_part(video_of(unseen_toy, heldout(unseen_toy)[0]))
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=ask(video, "q?"))
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert error.value.code == "missing_video"
    wrong = openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="tiny", messages=ask(video, "q?"))


def test_after_200_mixed_requests_it_answers_leaves_no_files_and_keeps_its_memory(
    server, client, unseen_toy: Path, tmp_path: Path
) -> None:
    url, process, tmp = server
    videos = [video_of(unseen_toy, e) for e in heldout(unseen_toy, 3)]
    bad = bad_requests(unseen_toy, tmp_path)

    def good(i: int) -> None:
        video = videos[i % len(videos)]
        if i % 2:
            part = {
                "type": "video_url",
                "video_url": {
                    "url": "data:video/mp4;base64," + base64.b64encode(video.read_bytes()).decode()
                },
            }
        else:
            part = video_part(video)
        reply = client.chat.completions.create(
            model="tiny", messages=ask(part, "What color is it?"), max_tokens=4
        )
        assert reply.choices[0].message.content

    def rss_kb() -> int:
        status = Path(f"/proc/{process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))

    for i in range(20):  # warm-up: every video, every kind of request
        good(i)
        raw = bad[i % len(bad)][3]
        raw_post(url, raw if isinstance(raw, bytes) else json.dumps(raw).encode())
    warm = rss_kb()
    for i in range(200):
        if i % 2:
            good(i)
        else:
            what, status, _, raw = bad[i % len(bad)]
            got, _ = raw_post(url, raw if isinstance(raw, bytes) else json.dumps(raw).encode())
            assert got == status, what
    assert process.poll() is None
    good(0)
    assert rss_kb() <= warm * 1.05, (warm, rss_kb())
    ours = list((tmp / "tmp").glob("panda-serve-*"))  # ONNX Runtime keeps a `.ses` file beside it
    assert len(ours) == 1 and list(ours[0].iterdir()) == []


def test_a_client_that_goes_away_cancels_its_answer(random_client, unseen_toy: Path) -> None:
    url = str(random_client.base_url).removesuffix("/v1/")
    video = video_part(video_of(unseen_toy, heldout(unseen_toy)[1]))
    request = {"model": "random", "messages": ask(video, "Describe the video."), "max_tokens": 1500}

    def completion_tokens() -> float:
        text = urllib.request.urlopen(url + "/metrics").read().decode()
        return float(re.search(r"^panda_completion_tokens_total (\S+)$", text, re.M).group(1))

    before = completion_tokens()
    stream = random_client.chat.completions.create(stream=True, **request)
    next(iter(stream))
    stream.close()
    reply = random_client.chat.completions.create(**{**request, "max_tokens": 4})
    assert reply.usage.completion_tokens == 4
    spent = completion_tokens() - before - 4
    assert spent < 1000  # the abandoned answer stopped early instead of running to its 1,500 tokens
    full = random_client.chat.completions.create(**{**request, "max_tokens": 1500})
    assert full.usage.completion_tokens == 1500  # without the disconnect it would have


def test_a_full_queue_answers_503_with_retry_after(random_bundle: Path, unseen_toy: Path) -> None:
    video = video_part(video_of(unseen_toy, heldout(unseen_toy)[2]))
    body = json.dumps({"model": "random", "messages": ask(video, "Describe it."), "max_tokens": 300}).encode()
    results: list[tuple[int, dict, dict]] = []

    def post() -> None:
        headers: dict = {}
        results.append((*raw_post(url, body, key=None, headers=headers), headers))

    with in_process_server(random_bundle, unseen_toy, max_queue=1) as url:
        threads = [threading.Thread(target=post) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    statuses = sorted(status for status, _, _ in results)
    assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses, statuses
    for status, reply, headers in results:
        if status == 503:
            assert reply["error"]["code"] == "queue_full" and int(headers["retry-after"]) >= 1


def test_serve_bad_arguments_exit_2(tiny_bundle: Path, tmp_path: Path) -> None:
    result = runner.invoke(cli_app, ["serve", "--bundle", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no such bundle directory" in result.output
    result = runner.invoke(
        cli_app, ["serve", "--bundle", str(tiny_bundle), "--media-dir", str(tmp_path / "none")]
    )
    assert result.exit_code == 2 and "no such directory" in result.output
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = runner.invoke(
            cli_app, ["serve", "--bundle", str(tiny_bundle), "--port", str(busy.getsockname()[1])]
        )
    assert result.exit_code == 2 and "choose another --port" in result.output


def test_serve_vision_torch_answers_like_panda_run(
    tiny_bundle: Path, unseen_toy: Path, tmp_path: Path
) -> None:
    """Every --vision choice serve offers runs: `torch` with --checkpoint gives `panda run --vision
    torch`'s answer; without --checkpoint it is exit 2 with one line, before anything loads."""
    entry = heldout(unseen_toy)[1]
    video = video_of(unseen_toy, entry)
    torch_args = ["--vision", "torch", "--checkpoint", "tiny"]
    args = ["run", "--bundle", str(tiny_bundle), str(video), entry["question"], *torch_args]
    result = runner.invoke(cli_app, [*args, "--max-new-tokens", "16", "--json", "-"])
    assert result.exit_code == 0, result.output
    expected = json.loads(result.stdout)["answer"]
    with panda_serve(tiny_bundle, unseen_toy, tmp_path, *torch_args) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)
        reply = client.chat.completions.create(
            model="tiny", messages=ask(video_part(video), entry["question"]), max_tokens=16
        )
    assert reply.choices[0].message.content == expected
    missing = runner.invoke(cli_app, ["serve", "--bundle", str(tiny_bundle), "--vision", "torch"])
    assert missing.exit_code == 2 and "give --checkpoint" in missing.output
    assert missing.output.count("\n") == 1, missing.output


def test_with_cache_a_restarted_server_takes_the_prefix_from_disk(
    tiny_bundle: Path, unseen_toy: Path, tmp_path: Path
) -> None:
    from panda_edge.runtime.options import RuntimeOptions
    from panda_edge.serving.app import ServeOptions, create_app
    from panda_edge.serving.server import running_server

    video = video_part(video_of(unseen_toy, heldout(unseen_toy)[4]))
    hows = []
    for _ in range(2):  # two server lifetimes over one cache directory
        runtime = RuntimeOptions(prefix_cache=tmp_path / "cache").open(tiny_bundle)
        with running_server(
            create_app(runtime, ServeOptions(model_name="tiny", media_dir=unseen_toy))
        ) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
            reply = client.chat.completions.create(model="tiny", messages=ask(video, "What color is it?"))
            hows.append((reply.usage.video_prefix, reply.choices[0].message.content))
    assert [how for how, _ in hows] == ["computed", "disk"]
    assert hows[0][1] == hows[1][1]


def test_a_damaged_cached_prefix_is_computed_again_and_logged(
    tiny_bundle: Path, unseen_toy: Path, tmp_path: Path
) -> None:
    """`panda serve --cache` over a state file with flipped bytes (same size): the fresh answer, the
    prefix computed again, a warning in the server's log, and the file replaced for the next start."""
    from tests.conftest import flip_bytes

    video = video_part(video_of(unseen_toy, heldout(unseen_toy)[5]))
    cache = tmp_path / "cache"
    replies = []
    for run in ("fresh", "damaged", "replaced"):
        if run == "damaged":
            (state,) = cache.glob("*.kv")
            flip_bytes(state)
        with panda_serve(tiny_bundle, unseen_toy, tmp_path / run, "--cache", str(cache)) as (url, _):
            client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)
            reply = client.chat.completions.create(
                model="tiny", messages=ask(video, "What color is it?"), max_tokens=16
            )
            replies.append((reply.usage.video_prefix, reply.choices[0].message.content))
    assert [how for how, _ in replies] == ["computed", "computed", "disk"]
    assert replies[0][1] == replies[1][1] == replies[2][1]
    logs = {run: (tmp_path / run / "serve.log").read_text() for run in ("fresh", "damaged", "replaced")}
    assert "warning: the cached prefix" in logs["damaged"] and "is damaged" in logs["damaged"]
    assert "is damaged" not in logs["fresh"] + logs["replaced"]


def test_remote_videos_are_downloaded_only_when_allowed(tiny_bundle: Path, unseen_toy: Path) -> None:
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(unseen_toy))
    files = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    entry = heldout(unseen_toy)[5]
    remote = f"http://127.0.0.1:{files.server_address[1]}/videos/{entry['video']}"
    part = {"type": "video_url", "video_url": {"url": remote}}
    try:
        with in_process_server(tiny_bundle, unseen_toy, allow_remote_media=True) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
            reply = client.chat.completions.create(model="random", messages=ask(part, entry["question"]))
            local = client.chat.completions.create(
                model="random", messages=ask(video_part(video_of(unseen_toy, entry)), entry["question"])
            )
            assert reply.choices[0].message.content == local.choices[0].message.content
            assert local.usage.video_prefix == "memory"  # the same content, downloaded or local
            missing = {"type": "video_url", "video_url": {"url": remote + ".none"}}
            with pytest.raises(openai.BadRequestError) as error:
                client.chat.completions.create(model="random", messages=ask(missing, "q?"))
            assert error.value.code == "video_not_found"
        with in_process_server(
            tiny_bundle, unseen_toy, allow_remote_media=True, max_request_bytes=1000
        ) as url:
            status, reply = raw_post(
                url, json.dumps({"model": "random", "messages": ask(part, "q?")}).encode()
            )
            assert status == 413 and reply["error"]["code"] == "video_too_large"
    finally:
        files.shutdown()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="panda serve --ray needs panda-edge[ray]")
def test_ray_replicas_answer_like_panda_serve_and_share_the_disk_cache(
    client, tiny_bundle: Path, unseen_toy: Path, tmp_path: Path
) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    cache = tmp_path / "cache"
    args = ["--ray", "local", "--replicas", "2", "--threads", "1", "--max-queue", "0", "--cache", str(cache)]
    short = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Ray's socket paths must stay under 108 bytes
    with panda_serve(tiny_bundle, unseen_toy, short, *args, port=port) as (url, _):
        replicas = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)
        for entry in heldout(unseen_toy, 3):
            request = {
                "model": "tiny",
                "messages": ask(video_part(video_of(unseen_toy, entry)), entry["question"]),
            }
            expected = client.chat.completions.create(**request, max_tokens=16).choices[0].message.content
            assert (
                replicas.chat.completions.create(**request, max_tokens=16).choices[0].message.content
                == expected
            )
        # two at once about a video one replica has seen: the other takes the prefix from the cache
        video = video_part(video_of(unseen_toy, heldout(unseen_toy)[6]))
        first = replicas.chat.completions.create(model="tiny", messages=ask(video, "What color is it?"))
        assert first.usage.video_prefix == "computed"
        hows: list[str] = []

        def ask_again() -> None:
            reply = replicas.chat.completions.create(model="tiny", messages=ask(video, "Which shape is it?"))
            hows.append(reply.usage.video_prefix)

        threads = [threading.Thread(target=ask_again) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(hows) in (["disk", "memory"], ["disk", "disk"]), hows
    shutil.rmtree(short, ignore_errors=True)
