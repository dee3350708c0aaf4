"""OpenAI Chat Completions with one video: the request's JSON to a `ChatRequest`, errors in OpenAI's shape.

A conversation is about one video, given as a content part of its first user message, spelled as vLLM
and SGLang accept it (`{"type": "video_url", "video_url": {"url": ...}}`) or as llama.cpp's server does
(`{"type": "input_video", "input_video": {"url": ...}}`), or as its frames: image parts
(`{"type": "image_url", "image_url": {"url": ...}}`, or the Responses API's `input_image`), in order
and with no video part, as lmms-eval and VLMEvalKit send a video to GPT-4o. Earlier assistant turns
are the model's answers; the last message is the question. System messages are accepted and not
used: Video-Panda was trained with its fixed system prompt, which the video prefix holds. Fields
clients send that do not change the answer (`user`, penalties, ...) are ignored; one that would and
that we cannot honour (`n` above 1, tools, logprobs, more frames than the model takes) is refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from panda_edge.sampling import Sampling

DEFAULT_MAX_TOKENS = 64
MAX_STOP_STRINGS = 4
VIDEO_PARTS = ("video_url", "input_video")
IMAGE_PARTS = ("image_url", "input_image")
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    500: "server_error",
    503: "overloaded_error",
}


class ApiError(Exception):
    """A request the server answers with a 4xx (or 5xx) and OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        kind = ERROR_TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = "messages", code: str | None = None) -> ApiError:
    return ApiError(400, message, param, code)


@dataclass(frozen=True)
class ChatRequest:
    """What one chat completion asks: the video, the earlier turns, the question and how to answer."""

    model: str
    video_url: str | None  # the video as a file, or
    turns: tuple[tuple[str, str], ...]  # earlier (question, answer) pairs
    question: str
    max_tokens: int = DEFAULT_MAX_TOKENS
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    image_urls: tuple[str, ...] = ()  # the video as its frames, in order
    num_frames: int | None = None  # frames the client asks the model to see (media_io_kwargs)


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON ({exc})", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", None, "invalid_json")
    return body


def parse_chat_request(
    body: dict[str, Any], served_model: str, max_tokens_limit: int, video_frames: int = 8
) -> ChatRequest:
    """Check a /v1/chat/completions body; every problem is an ApiError naming the field."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required: GET /v1/models lists the one served", "model")
    if model != served_model:
        raise ApiError(
            404,
            f"the model '{model}' is not served here; this server has '{served_model}'",
            "model",
            "model_not_found",
        )
    for unsupported in ("tools", "functions", "tool_choice", "logprobs", "top_logprobs", "response_format"):
        if body.get(unsupported) not in (None, False):
            raise bad_request(f"'{unsupported}' is not supported by this server", unsupported, "unsupported")
    if body.get("n") not in (None, 1):
        raise bad_request("only n=1 is supported", "n")
    video_url, image_urls, turns, question = _conversation(body.get("messages"))
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    if not _is_int(max_tokens) or not 1 <= max_tokens <= max_tokens_limit:
        raise bad_request(f"'max_tokens' must be an integer in [1, {max_tokens_limit}]", "max_tokens")
    temperature = _number(body, "temperature", 0.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise bad_request("'top_p' must be above 0", "top_p")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise bad_request("'seed' must be an integer", "seed")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object", "stream_options")
    return ChatRequest(
        model=model,
        video_url=video_url,
        turns=turns,
        question=question,
        max_tokens=max_tokens,
        sampling=Sampling(temperature=temperature, top_p=top_p, seed=seed),
        stop=_stop(body.get("stop")),
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
        image_urls=image_urls,
        num_frames=_num_frames(body, video_frames),
    )


def _conversation(messages: Any) -> tuple[str | None, tuple[str, ...], tuple[tuple[str, str], ...], str]:
    """(video URL, image URLs, earlier turns, question) of `messages`: user and assistant alternate,
    the video (one video part, or image parts that are its frames) is in the first user message, the
    last message is the user's question."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list")
    said: list[tuple[str, str]] = []  # (role, text) of user and assistant messages
    videos: list[tuple[int, str]] = []
    images: list[tuple[int, str]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(f"{where} must be an object", where)
        role = message.get("role")
        if role in ("system", "developer"):
            continue
        if role not in ("user", "assistant"):
            raise bad_request(f"{where}: role '{role}' is not supported (user, assistant, system)", where)
        text, urls, frames = _content(message.get("content"), f"{where}.content", allow_video=role == "user")
        videos.extend((len(said), url) for url in urls)
        images.extend((len(said), url) for url in frames)
        said.append((role, text))
    if not said or said[0][0] != "user":
        raise bad_request("the conversation must start with a user message that holds the video")
    for i, (role, _) in enumerate(said):
        if role != ("user" if i % 2 == 0 else "assistant"):
            raise bad_request("user and assistant messages must alternate, starting with the user")
    if said[-1][0] != "user":
        raise bad_request("the last message must be the user's question")
    if videos and images:
        raise bad_request(
            "a video part and image parts: send the video either as one video_url part or as image "
            "parts that are its frames, not both",
            code="video_and_images",
        )
    if not videos and not images:
        raise bad_request(
            "no video part: put {'type': 'video_url', 'video_url': {'url': ...}} (or the video's frames "
            "as image_url parts) in the first user message",
            code="missing_video",
        )
    if len(videos) > 1:
        raise bad_request(
            "one video per conversation: this request has " + str(len(videos)), code="too_many_videos"
        )
    if videos and videos[0][0] != 0:
        raise bad_request("the video must be in the first user message", code="misplaced_video")
    if any(turn != 0 for turn, _ in images):
        raise bad_request(
            "images in a later turn: a conversation is about one video, and its frames are the image "
            "parts of the first user message; start a new conversation to ask about other frames",
            code="misplaced_video",
        )
    texts = [text for _, text in said]
    if not all(texts[0::2]):
        raise bad_request("every user message needs a question (a text part)", code="missing_text")
    turns = tuple(zip(texts[0:-1:2], texts[1::2], strict=True))
    video_url = videos[0][1] if videos else None
    return video_url, tuple(url for _, url in images), turns, texts[-1]


def _content(content: Any, where: str, allow_video: bool) -> tuple[str, list[str], list[str]]:
    """A message's text (its text parts joined by newlines), its video URLs and its image URLs."""
    if isinstance(content, str):
        return content.strip(), [], []
    if not isinstance(content, list):
        raise bad_request(f"{where} must be a string or a list of content parts", where)
    texts, urls, images = [], [], []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in VIDEO_PARTS + IMAGE_PARTS and allow_video:
            # image_url: {"url": ..., "detail": ...}; the Responses API's input_image: "image_url": "..."
            inner = part.get("image_url", part.get(kind)) if kind in IMAGE_PARTS else part.get(kind)
            url = inner.get("url") if isinstance(inner, dict) else inner if isinstance(inner, str) else None
            if not isinstance(url, str) or not url:
                raise bad_request(f"{where}[{j}]: a {kind} part needs {{'url': ...}}", f"{where}[{j}]")
            (images if kind in IMAGE_PARTS else urls).append(url)
        else:
            raise bad_request(
                f"{where}[{j}]: unsupported content part {kind!r}", f"{where}[{j}]", "unsupported_content"
            )
    return "\n".join(texts).strip(), urls, images


def _num_frames(body: dict[str, Any], video_frames: int) -> int | None:
    """The frame count a client asks for, spelled as vLLM takes it (`media_io_kwargs.video.num_frames`,
    `mm_processor_kwargs.num_frames`): None when not asked; refused above the model's `video_frames`."""
    asked: dict[str, Any] = {}
    media_io = body.get("media_io_kwargs")
    if media_io is not None:
        video = media_io.get("video") if isinstance(media_io, dict) else None
        if not isinstance(media_io, dict) or not isinstance(video, (dict, type(None))):
            raise bad_request("'media_io_kwargs' must be {'video': {'num_frames': N}}", "media_io_kwargs")
        if video and video.get("num_frames") is not None:
            asked["media_io_kwargs.video.num_frames"] = video["num_frames"]
    processor = body.get("mm_processor_kwargs")
    if processor is not None:
        if not isinstance(processor, dict):
            raise bad_request("'mm_processor_kwargs' must be an object", "mm_processor_kwargs")
        if processor.get("num_frames") is not None:
            asked["mm_processor_kwargs.num_frames"] = processor["num_frames"]
    for name, n in asked.items():
        if not _is_int(n) or n < 1:
            raise bad_request(f"'{name}' must be a positive integer", name)
        if n > video_frames:
            raise bad_request(
                f"'{name}' is {n}: this model sees at most {video_frames} frames of a video; ask for "
                f"{video_frames} or fewer (more frames sent as images are sampled to {video_frames})",
                name,
                "too_many_frames",
            )
    if len(set(asked.values())) > 1:
        raise bad_request(f"two different frame counts asked: {asked}", next(iter(asked)))
    return next(iter(asked.values()), None)


def _stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request("'stop' must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise bad_request(f"at most {MAX_STOP_STRINGS} stop strings", "stop")
    return tuple(s for s in stops if s)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad_request(f"'{name}' must be a number in [{low}, {high}]", name)
    if not low <= value <= high:
        raise bad_request(f"'{name}' must be in [{low}, {high}]", name)
    return float(value)
