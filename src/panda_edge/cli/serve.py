"""`panda serve`: the runtime behind an OpenAI-compatible HTTP API (Chat Completions with a video part)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from panda_edge.backends import CPU, DEFAULT_BACKEND, DEFAULT_EVERY_S, DEFAULT_KV_CACHE, DEFAULT_WINDOW_S
from panda_edge.cli._common import (
    BundleOpt,
    CacheMaxOpt,
    CacheOpt,
    CheckpointOpt,
    CtxOpt,
    GgufOpt,
    GpuLayersOpt,
    KvCacheAlias,
    KvTypeOpt,
    LoraOpt,
    PrecisionOpt,
    RayAddress,
    Threads,
    VisionDeviceOpt,
    VisionOpt,
    err,
    handle_errors,
    note,
    runtime_options,
    warn,
)
from panda_edge.errors import PandaError


@handle_errors
def serve(
    bundle: BundleOpt,
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 exposes the server to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: a free one, printed).")] = 8000,
    vision: VisionOpt = DEFAULT_BACKEND,
    precision: PrecisionOpt = None,
    gguf_type: GgufOpt = None,
    n_gpu_layers: GpuLayersOpt = 0,
    threads: Threads = None,
    n_ctx: CtxOpt = None,
    kv_type: KvTypeOpt = DEFAULT_KV_CACHE,
    kv_cache: KvCacheAlias = None,
    cache: CacheOpt = None,
    cache_max_gb: CacheMaxOpt = 20.0,
    checkpoint: CheckpointOpt = None,
    device: VisionDeviceOpt = CPU,
    lora: LoraOpt = None,
    media_dir: Annotated[
        Path | None,
        typer.Option("--media-dir", help="file:// video URLs are served from under this directory only."),
    ] = None,
    allow_remote_media: Annotated[
        bool, typer.Option("--allow-remote-media", help="Download http(s) video URLs (refused otherwise).")
    ] = False,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", envvar="PANDA_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1 routes."
        ),
    ] = None,
    max_queue: Annotated[
        int, typer.Option("--max-queue", min=0, help="Requests waiting beside the running one; past it 503.")
    ] = 16,
    max_request_mb: Annotated[
        float,
        typer.Option("--max-request-mb", min=0.01, help="Largest request body (a base64 video) or download."),
    ] = 64.0,
    model_name: Annotated[
        str | None,
        typer.Option(
            "--model-name", help="The model id clients ask for (default: the bundle's folder name)."
        ),
    ] = None,
    ray: RayAddress = None,
    replicas: Annotated[
        int, typer.Option("--replicas", min=1, help="With --ray: runtimes behind the one address.")
    ] = 1,
    gpus_per_replica: Annotated[
        float, typer.Option("--gpus-per-replica", min=0.0, help="With --ray: GPUs each replica asks for.")
    ] = 0.0,
    stream: Annotated[
        list[str] | None,
        typer.Option(
            "--stream",
            help="NAME=SOURCE: a live stream (URL, device or file, as panda watch takes) kept as a ready "
            "window; a request's video_url stream://NAME is answered against it (repeatable).",
        ),
    ] = None,
    stream_window: Annotated[
        float, typer.Option("--stream-window", min=0.1, help="Seconds of each stream one window holds.")
    ] = DEFAULT_WINDOW_S,
    stream_every: Annotated[
        float,
        typer.Option("--stream-every", min=0.0, help="Refresh each stream's window at most this often."),
    ] = DEFAULT_EVERY_S,
) -> None:
    """Serve the bundle over HTTP, as OpenAI's Chat Completions API with a video content part.

    POST /v1/chat/completions (stream or not), GET /v1/models, /health, /metrics (Prometheus). One
    decoder answers requests in order; a later request about the same video (or a follow-up that
    repeats the earlier turns) starts from the cached video prefix, in memory and with --cache on
    disk. With --stream NAME=SOURCE, video_url stream://NAME is the stream's newest window (see panda
    watch), and GET /v1/streams lists the streams. Ctrl-C stops it.
    """
    from panda_edge.serving.app import ServeOptions
    from panda_edge.serving.streams import parse_streams

    streams = parse_streams(stream or [])
    if streams and ray is not None:
        raise PandaError("--stream runs its windows in the server's process: not with --ray")

    if media_dir is not None and not media_dir.is_dir():
        raise PandaError(f"--media-dir {media_dir}: no such directory")
    options = ServeOptions(
        model_name=model_name or bundle.resolve().name,
        api_key=api_key,
        media_dir=media_dir,
        allow_remote_media=allow_remote_media,
        max_queue=max_queue,
        max_request_bytes=int(max_request_mb * (1 << 20)),
    )
    runtime = runtime_options(
        vision,
        precision,
        gguf_type,
        threads,
        n_gpu_layers,
        n_ctx,
        kv_type,
        kv_cache,
        cache,
        cache_max_gb,
        checkpoint,
        lora,
        device,
    )
    if ray is not None and gpus_per_replica == 0 and (device != CPU or n_gpu_layers):
        # Ray hides the GPUs from a replica that asked for none: it would fail at start, or run on the CPU
        raise PandaError("--device cuda and --n-gpu-layers with --ray need --gpus-per-replica (e.g. 1)")
    if host not in ("127.0.0.1", "::1", "localhost") and api_key is None:
        warn(f"listening on {host} without --api-key: anyone who can reach it can use it")

    def where(url: str, what: str) -> None:  # shown with -q too: clients need the address
        err.print(f"serving '{options.model_name}' on {url}/v1 ({what}); Ctrl-C stops", highlight=False)

    if ray is not None:
        from panda_edge.serving.ray_replicas import serve_replicas

        def replicas_ready(url: str) -> None:
            where(url, f"{replicas} Ray Serve replicas")

        serve_replicas(bundle, runtime, options, replicas, host, port, ray, gpus_per_replica, replicas_ready)
        return
    from panda_edge.serving.server import serve_bundle

    note(f"loading {bundle}")
    serve_bundle(
        bundle,
        runtime,
        options,
        host,
        port,
        lambda url, loaded: where(url, loaded.describe()["decoder"]),
        streams,
        stream_window,
        stream_every,
    )
