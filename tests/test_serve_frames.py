"""`panda serve` given a video as its frames, as evaluation harnesses send it (lmms-eval: PNG data URLs
after the text; VLMEvalKit: JPEG at 512 px, "detail": "low", an `sk-` key): a real server on a free
local port, spoken to by the official `openai` package."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest

from panda_edge.optional import has_llama_cpp

openai = pytest.importorskip("openai", reason="the tests speak to the server with openai (the dev extra)")
pytest.importorskip("starlette", reason="panda serve needs the serve extra")
pytestmark = pytest.mark.skipif(
    not has_llama_cpp(), reason="llama-cpp-python is not installed (pip install 'panda-edge[llama]')"
)
KEY = "sk-panda-test"  # VLMEvalKit checks that a key starts with sk-
QUESTION = "Which direction does the square move?"


@pytest.fixture(scope="module")
def client(tiny_bundle: Path, unseen_toy: Path):
    from panda_edge.runtime.options import RuntimeOptions
    from panda_edge.serving.app import ServeOptions, create_app
    from panda_edge.serving.server import running_server

    options = ServeOptions(model_name="tiny", api_key=KEY, media_dir=unseen_toy)
    with running_server(create_app(RuntimeOptions().open(tiny_bundle), options)) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def videos(unseen_toy: Path, n: int) -> list[Path]:
    """The first `n` held-out videos."""
    names = dict.fromkeys(e["video"] for e in json.loads((unseen_toy / "heldout.json").read_text()))
    return [unseen_toy / "videos" / name for name in list(names)[:n]]


def encoded(frame: np.ndarray, kind: str = "PNG", **save) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(frame).save(out, kind, **save)
    return out.getvalue()


def image_part(data: bytes, mime: str = "image/png", **extra) -> dict:
    url = f"data:{mime};base64,{base64.b64encode(data).decode()}"
    return {"type": "image_url", "image_url": {"url": url, **extra}}


def frames_message(parts: list[dict], question: str = QUESTION) -> list[dict]:
    """lmms-eval's shape: the text part, then one image part per frame."""
    return [{"role": "user", "content": [{"type": "text", "text": question}, *parts]}]


def video_message(path: Path, question: str = QUESTION) -> list[dict]:
    content = [{"type": "video_url", "video_url": {"url": path.as_uri()}}, {"type": "text", "text": question}]
    return [{"role": "user", "content": content}]


def chat(client, messages: list[dict], **extra):
    return client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=16, temperature=0, **extra
    )


def test_the_frames_panda_run_samples_get_the_files_answer_token_for_token(client, unseen_toy: Path) -> None:
    from panda_edge.video.decode import read_video

    for path in videos(unseen_toy, 3):
        expected = chat(client, video_message(path))
        assert expected.usage.video_frames is None  # a file: the worker decodes it
        frames = read_video(path, max_frames=8).frames
        pngs = [encoded(f) for f in frames]
        reply = chat(client, frames_message([image_part(p) for p in pngs]))
        assert reply.choices[0].message.content == expected.choices[0].message.content
        assert reply.usage.completion_tokens == expected.usage.completion_tokens
        assert reply.usage.prompt_tokens == expected.usage.prompt_tokens
        assert reply.usage.video_frames == len(frames)
        # 15 frames (a blank between each) sample back to the 8 by the one rule; the Responses
        # API's input_image spelling, images before the text
        blank = encoded(np.zeros_like(frames[0]))
        fifteen = [p for png in pngs for p in (png, blank)][:15]
        parts = [
            {"type": "input_image", "image_url": image_part(p)["image_url"]["url"], "detail": "auto"}
            for p in fifteen
        ]
        content = [*parts, {"type": "text", "text": QUESTION}]
        again = chat(client, [{"role": "user", "content": content}])
        assert again.choices[0].message.content == expected.choices[0].message.content
        assert again.usage.video_prefix == "memory" and again.usage.video_frames == 8


def test_vlmevalkit_jpeg_frames_at_512_px_with_detail_low_are_answered(client, unseen_toy: Path) -> None:
    from PIL import Image

    from panda_edge.video.decode import read_video

    frames = read_video(videos(unseen_toy, 1)[0], max_frames=8).frames
    jpegs = [
        encoded(np.asarray(Image.fromarray(f).resize((512, 512 * f.shape[0] // f.shape[1]))), "JPEG")
        for f in frames
    ]
    reply = chat(client, frames_message([image_part(j, "image/jpeg", detail="low") for j in jpegs]))
    assert reply.choices[0].message.content and reply.usage.video_frames == 8
    webp = [image_part(encoded(f, "WEBP", lossless=True), "image/webp") for f in frames[:3]]
    assert chat(client, frames_message(webp)).usage.video_frames == 3


def test_one_image_is_a_one_frame_video(client, unseen_toy: Path) -> None:
    from panda_edge.video.decode import read_video

    frame = read_video(videos(unseen_toy, 1)[0], max_frames=8).frames[3]
    reply = chat(client, frames_message([image_part(encoded(frame))]))
    assert reply.choices[0].message.content and reply.usage.video_frames == 1
    stream = chat(
        client,
        frames_message([image_part(encoded(frame))]),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == reply.choices[0].message.content
    )
    assert chunks[-1].usage.video_frames == 1 and chunks[-1].usage.video_prefix == "memory"


def test_a_follow_up_about_the_same_frames_reuses_the_prefix(client, unseen_toy: Path) -> None:
    from panda_edge.video.decode import read_video

    frames = read_video(videos(unseen_toy, 4)[3], max_frames=8).frames
    parts = [image_part(encoded(f)) for f in frames]
    first = chat(client, frames_message(parts))
    assert first.usage.video_prefix == "computed" and first.usage.prompt_tokens_details.cached_tokens == 0
    answer = first.choices[0].message.content
    follow_up = [
        *frames_message(parts),
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "What color is it?"},
    ]
    reply = chat(client, follow_up)
    assert reply.usage.video_prefix == "memory"
    cached = reply.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens <= cached and reply.usage.prompt_tokens - cached < 20


def test_num_frames_is_honoured_up_to_the_models_eight(client, unseen_toy: Path) -> None:
    """vLLM's media_io_kwargs: a file sampled to N frames by the official rule gets the answer of
    those N frames sent as images; frames sent as images are resampled to N by the same rule."""
    from panda_edge.video.decode import read_video
    from panda_edge.video.frames import sampled_indices

    path = videos(unseen_toy, 2)[1]
    four = read_video(path, max_frames=4).frames
    expected = chat(client, frames_message([image_part(encoded(f)) for f in four]))
    asked = {"media_io_kwargs": {"video": {"num_frames": 4}}}
    reply = chat(client, video_message(path), extra_body=asked)
    assert reply.choices[0].message.content == expected.choices[0].message.content
    assert reply.usage.video_frames == 4 and reply.usage.prompt_tokens == expected.usage.prompt_tokens
    assert reply.usage.video_prefix == "memory"  # the same four frames' prefix
    eight = chat(client, video_message(path), extra_body={"media_io_kwargs": {"video": {"num_frames": 8}}})
    plain = chat(client, video_message(path))
    assert eight.choices[0].message.content == plain.choices[0].message.content
    frames = read_video(path, max_frames=8).frames
    picked = chat(client, frames_message([image_part(encoded(frames[i])) for i in sampled_indices(8, 3)]))
    resampled = chat(
        client,
        frames_message([image_part(encoded(f)) for f in frames]),
        extra_body={"mm_processor_kwargs": {"num_frames": 3}},
    )
    assert resampled.usage.video_frames == 3 and resampled.usage.video_prefix == "memory"
    assert resampled.choices[0].message.content == picked.choices[0].message.content


def bad_frame_requests(unseen_toy: Path) -> list[tuple[str, list[dict], dict, str]]:
    """(what, messages, extra body, the error code) of requests the server must refuse."""
    from panda_edge.video.decode import read_video

    path = videos(unseen_toy, 1)[0]
    frames = read_video(path, max_frames=8).frames
    png = encoded(frames[0])
    small = encoded(frames[1][:-2])
    one = [image_part(png)]
    video = {"type": "video_url", "video_url": {"url": path.as_uri()}}
    later = [
        *frames_message(one),
        {"role": "assistant", "content": "up"},
        {"role": "user", "content": [{"type": "text", "text": "and now?"}, image_part(png)]},
    ]
    bomb = encoded(np.zeros((5000, 5000, 3), np.uint8))  # 75 MB of pixels in a few KB
    return [
        ("frames of two sizes", frames_message([image_part(png), image_part(small)]), {}, "invalid_video"),
        ("129 frames", frames_message(one * 129), {}, "invalid_video"),
        ("a damaged PNG", frames_message([*one, image_part(png[: len(png) // 2])]), {}, "invalid_video"),
        ("a GIF", frames_message([image_part(encoded(frames[0], "GIF"), "image/gif")]), {}, "invalid_video"),
        ("a BMP", frames_message([image_part(encoded(frames[0], "BMP"), "image/bmp")]), {}, "invalid_video"),
        ("not an image", frames_message([image_part(b"hello", "image/png")]), {}, "invalid_video"),
        ("a huge frame", frames_message([image_part(bomb)]), {}, "invalid_video"),
        ("a text data: URL", frames_message([image_part(png, "text/plain")]), {}, "invalid_image"),
        ("images and a video part", frames_message([video, *one]), {}, "video_and_images"),
        ("images in a later turn", later, {}, "misplaced_video"),
        (
            "num_frames 16",
            video_message(path),
            {"media_io_kwargs": {"video": {"num_frames": 16}}},
            "too_many_frames",
        ),
        (
            "num_frames 16 for frames",
            frames_message(one),
            {"mm_processor_kwargs": {"num_frames": 16}},
            "too_many_frames",
        ),
    ]


def test_each_bad_frames_request_is_a_400_with_openais_error_body(client, unseen_toy: Path) -> None:
    for what, messages, extra, code in bad_frame_requests(unseen_toy):
        with pytest.raises(openai.BadRequestError) as caught:
            chat(client, messages, extra_body=extra or None)
        error = caught.value.body
        assert caught.value.status_code == 400, what
        assert error["code"] == code and error["type"] == "invalid_request_error", (what, error)
        assert error["message"], what
        if code == "too_many_frames":
            assert "at most 8 frames" in error["message"]
    # the server still answers after all of them
    assert chat(client, frames_message([image_part(encoded(np.zeros((64, 64, 3), np.uint8)))])).choices


def test_image_urls_follow_the_video_urls_rules(client, unseen_toy: Path, tmp_path: Path) -> None:
    """file:// frames under --media-dir are read (the same answer as data: URLs); outside it 403;
    http(s) refused without --allow-remote-media."""
    from panda_edge.video.decode import read_video

    frames = read_video(videos(unseen_toy, 1)[0], max_frames=8).frames
    inside = unseen_toy / "frames-as-files"
    inside.mkdir(exist_ok=True)
    files = []
    for i, frame in enumerate(frames):
        files.append(inside / f"{i}.png")
        files[-1].write_bytes(encoded(frame))
    as_files = [{"type": "image_url", "image_url": {"url": f.as_uri()}} for f in files]
    reply = chat(client, frames_message(as_files))
    expected = chat(client, frames_message([image_part(encoded(f)) for f in frames]))
    assert reply.choices[0].message.content == expected.choices[0].message.content
    assert expected.usage.video_prefix == "memory"  # the same pixels: the same prefix
    outside = tmp_path / "0.png"
    outside.write_bytes(encoded(frames[0]))
    with pytest.raises(openai.PermissionDeniedError) as caught:
        chat(client, frames_message([{"type": "image_url", "image_url": {"url": outside.as_uri()}}]))
    assert caught.value.body["code"] == "media_path_refused"
    with pytest.raises(openai.BadRequestError) as caught:
        chat(
            client, frames_message([{"type": "image_url", "image_url": {"url": "https://example.com/0.png"}}])
        )
    assert caught.value.body["code"] == "remote_media_refused"
