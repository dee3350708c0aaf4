"""The HTTP routes: /v1/chat/completions, /v1/models, /v1/streams, /health, /metrics, on Starlette.

Anything a client sends wrong is a 4xx with OpenAI's error body; a streamed answer starts (200 and
its first chunk) only once its first token exists, so a bad video is a 400, not a broken stream.
A client that goes away cancels its request: skipped while it waits, stopped after its next token.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from panda_edge.errors import VideoError
from panda_edge.optional import require
from panda_edge.runtime.video_runtime import VideoInput, VideoRuntime
from panda_edge.serving.media import MediaFile, MediaResolver
from panda_edge.serving.metrics import ServerMetrics
from panda_edge.serving.protocol import ApiError, ChatRequest, bad_request, parse_body, parse_chat_request
from panda_edge.serving.streams import SCHEME, LiveStreams, StreamVideo
from panda_edge.serving.worker import AnswerWorker, Job

log = logging.getLogger(__name__)
DRAIN_FACTOR = 16
CLIENT_GONE = 499  # nginx's status for a request whose client closed the connection


@dataclass(frozen=True)
class ServeOptions:
    """What the HTTP side enforces: the model id, the key, where videos may come from, the limits."""

    model_name: str
    api_key: str | None = None
    media_dir: Path | None = None
    allow_remote_media: bool = False
    max_queue: int = 16
    max_request_bytes: int = 64 << 20


def create_app(runtime: VideoRuntime, options: ServeOptions, streams: LiveStreams | None = None) -> Any:
    """The ASGI app around a loaded runtime (and its started live `streams`, if any); it closes them
    when the server shuts down."""
    require("starlette", "serve")
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    metrics = ServerMetrics()
    if streams is not None:
        metrics.registry.register(streams.collector())
    media = MediaResolver(options.media_dir, options.allow_remote_media, options.max_request_bytes)
    worker = AnswerWorker(runtime, options.max_queue, metrics)
    created = int(time.time())
    max_tokens_limit = runtime.n_ctx
    video_frames = runtime.vision_config.video_frames

    def error_response(error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    def gone() -> Response:
        metrics.requests.labels(str(CLIENT_GONE)).inc()
        return Response(status_code=CLIENT_GONE)  # nobody reads it

    def check_key(request: Request) -> None:
        if options.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), options.api_key.encode()
        ):
            raise ApiError(
                401, "a valid API key is required: 'Authorization: Bearer <key>'", None, "invalid_api_key"
            )

    async def read_body(request: Request) -> bytes:
        """The body, or a 413 once it passes the limit. An oversized body is still read (up to
        DRAIN_FACTOR times the limit, then the connection is dropped): a client still sending when
        the server closes sees a reset, not the 413."""
        limit = options.max_request_bytes
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif size > DRAIN_FACTOR * limit:
                break
        if size > limit:
            raise _too_large(limit)
        return b"".join(chunks)

    async def models(request: Request) -> Response:
        check_key(request)
        entry = {"id": options.model_name, "object": "model", "created": created, "owned_by": "panda-edge"}
        return JSONResponse({"object": "list", "data": [entry]})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": options.model_name, "queue": worker.waiting})

    async def streams_route(request: Request) -> Response:
        try:
            check_key(request)
        except ApiError as error:
            return error_response(error)
        listed = [] if streams is None else streams.describe()
        return JSONResponse({"object": "list", "data": listed})

    async def metrics_route(request: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    async def chat_completions(request: Request) -> Response:
        try:
            check_key(request)
            body = parse_body(await read_body(request))
            chat = parse_chat_request(body, options.model_name, max_tokens_limit, video_frames)
            if chat.video_url is not None and chat.video_url.startswith(SCHEME):
                video = _stream_video(streams, chat)
            else:
                video = await asyncio.to_thread(open_video, runtime, media, chat)
            job = Job(chat, video, asyncio.get_running_loop())
            try:
                worker.submit(job)
            except BaseException:
                if isinstance(video, MediaFile):
                    video.close()
                raise
            first = await _next_event(job, request)
            if first[0] == "error":
                raise first[1]
        except ApiError as error:
            metrics.requests.labels(str(error.status)).inc()
            return error_response(error)
        if first[0] == "gone":
            return gone()
        metrics.requests.labels("200").inc()
        reply_id = f"chatcmpl-{uuid.uuid4().hex}"
        if chat.stream:
            stream = _sse(job, first, reply_id, options.model_name, chat)
            return StreamingResponse(
                stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        kind, value = first
        while kind == "text":
            kind, value = await _next_event(job, request)
        if kind == "gone":
            return gone()
        if kind == "error":
            return error_response(value)
        return JSONResponse(_completion(reply_id, options.model_name, value))

    async def http_error(request: Request, exc: HTTPException) -> Response:
        message = {
            404: f"no route {request.url.path}",
            405: f"{request.method} is not allowed on {request.url.path}",
        }
        return error_response(
            ApiError(
                exc.status_code,
                message.get(exc.status_code, str(exc.detail)),
                None,
                "not_found" if exc.status_code == 404 else None,
            )
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            worker.close()
            if streams is not None:
                streams.close()
            media.close()
            runtime.close()

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/streams", streams_route, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.state.worker = worker
    app.state.media = media
    app.state.runtime = runtime
    app.state.streams = streams
    return app


def _stream_video(streams: LiveStreams | None, chat: ChatRequest) -> StreamVideo:
    """A `stream://NAME` video: the live window of that name (404 when the server has none)."""
    if streams is None:
        raise ApiError(
            404,
            "this server has no live streams (start it with --stream NAME=SOURCE)",
            "messages",
            "stream_not_found",
        )
    if chat.num_frames is not None:
        raise bad_request("a live stream is sampled by its window; num_frames does not apply to it")
    return streams.video(chat.video_url or "")


def open_video(runtime: VideoRuntime, media: MediaResolver, chat: ChatRequest) -> MediaFile | VideoInput:
    """The request's video, off the event loop: a file the worker decodes (the model's own frame
    count), or frames decoded and sampled here (images; a file with fewer frames asked). A video that
    cannot be read is a 400 `invalid_video`."""
    model_frames = runtime.vision_config.video_frames
    frames = chat.num_frames or model_frames
    try:
        if chat.image_urls:
            return _images_video(runtime, media, chat.image_urls, frames)
        video = media.open(chat.video_url or "")
        if frames == model_frames:
            return video
        from panda_edge.video.decode import read_video

        try:
            decoded = read_video(video.path, max_frames=frames)
        finally:
            video.close()
        return runtime.frames_input(decoded.frames, label=f"a video read at {frames} frames")
    except VideoError as exc:
        raise bad_request(str(exc), code="invalid_video") from None


def _images_video(
    runtime: VideoRuntime, media: MediaResolver, urls: tuple[str, ...], frames: int
) -> VideoInput:
    """Image URLs as one video: counted before any is read, each read and checked, `frames` of them kept
    by the one rule (`video.frames`)."""
    from panda_edge.video.frames import check_count
    from panda_edge.video.images import read_frames

    check_count(len(urls))
    sampled = read_frames(media.read_images(urls), frames)
    return runtime.frames_input(sampled, label=f"{len(urls)} images")


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"the request is over {limit >> 20} MB (the server's --max-request-mb)",
        None,
        "request_too_large",
    )


async def _next_event(job: Job, request: Any) -> tuple[str, Any]:
    """The job's next event, or ("gone", None) when the client disconnects meanwhile (which cancels
    the job)."""
    get = asyncio.ensure_future(job.events.get())
    gone = asyncio.ensure_future(_disconnected(request))
    done, _ = await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
    if get in done:
        gone.cancel()
        return get.result()
    get.cancel()
    job.cancelled.set()
    return "gone", None


async def _disconnected(request: Any) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _completion(reply_id: str, model: str, done: dict[str, Any]) -> dict[str, Any]:
    message = {"role": "assistant", "content": done["content"]}
    return {
        "id": reply_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "finish_reason": done["finish_reason"], "logprobs": None}
        ],
        "usage": done["usage"],
    }


async def _sse(
    job: Job, first: tuple[str, Any], reply_id: str, model: str, chat: ChatRequest
) -> AsyncIterator[str]:
    """OpenAI's chunk stream: the role, the text pieces, the finish reason, usage when asked, [DONE]."""
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, usage: dict | None = None) -> str:
        choices = (
            []
            if usage is not None
            else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
        )
        data: dict[str, Any] = {
            "id": reply_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
        }
        if usage is not None:
            data["usage"] = usage
        return f"data: {json.dumps(data)}\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        kind, value = first
        while kind == "text":
            yield chunk({"content": value})
            kind, value = await job.events.get()
        if kind == "error":  # after the first token: rare (a bug); the stream says so and ends
            yield f"data: {json.dumps(value.body())}\n\n"
            return
        yield chunk({}, value["finish_reason"])
        if chat.include_usage:
            yield chunk({}, usage=value["usage"])
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()  # a client gone mid-stream: the decoder stops after its next token
