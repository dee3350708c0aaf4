"""`panda serve --ray --replicas N`: the same app as Ray Serve replicas behind one address.

Each replica is a Ray actor that loads its own runtime (the bundle's path must be readable on every
node: a shared filesystem, or the same path on each machine) and serves `create_app`'s routes; Ray
Serve's proxy spreads requests over them. A replica keeps its last video's prefix in its KV cache; a
`--cache` directory that every replica sees lets a follow-up that lands on another replica start from
the prefix on disk. Ray is an optional extra: `pip install -e ".[ray]"`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from panda_edge.backends import default_precision
from panda_edge.optional import require
from panda_edge.runtime.bundle_parts import open_bundle
from panda_edge.serving.app import RuntimeOptions, ServeOptions, create_app

APP_NAME = "panda"


def build_app(bundle: str, runtime: RuntimeOptions, options: ServeOptions) -> Any:
    """Run on each replica when it starts: its own runtime and app."""
    return create_app(runtime.open(bundle), options)


def deploy(
    bundle: Path,
    runtime: RuntimeOptions,
    options: ServeOptions,
    replicas: int,
    host: str,
    port: int,
    address: str | None = None,
    gpus_per_replica: float = 0.0,
) -> str:
    """Start (or join, with `address`) a Ray cluster and run `replicas` replicas behind
    http://host:port; returns that URL once every replica answers."""
    ray = require("ray", "ray")
    serve = require("ray.serve", "ray")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    path = str(bundle.resolve())

    def builder() -> Any:  # a plain function: Ray Serve calls it on each replica as it starts
        return build_app(path, runtime, options)

    deployment = serve.deployment(
        serve.ingress(builder)(),
        name="panda-runtime",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": 0, "num_gpus": gpus_per_replica},
        # a replica answers one request at a time and queues `max_queue` more; past that Ray routes
        # to another replica (or holds the request) instead of the replica answering 503
        max_ongoing_requests=options.max_queue + 1,
    )
    serve.run(deployment.bind(), name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{host}:{port}"


def serve_replicas(
    bundle: Path,
    runtime: RuntimeOptions,
    options: ServeOptions,
    replicas: int,
    host: str,
    port: int,
    address: str = "local",
    gpus_per_replica: float = 0.0,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """`panda serve --ray`: check the bundle here (a bad one is exit 2, not replicas failing to
    start), deploy, say where (`on_ready(url)`), and serve until interrupted."""
    open_bundle(
        bundle, runtime.gguf_type, runtime.precision or default_precision(runtime.vision), runtime.vision
    )
    url = deploy(
        bundle,
        runtime,
        options,
        replicas,
        host,
        port,
        None if address == "local" else address,
        gpus_per_replica,
    )
    if on_ready is not None:
        on_ready(url)
    serve = require("ray.serve", "ray")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
