"""uvicorn around the app: `serve` for `panda serve`, `running_server` for tests and `panda bench serve`."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from panda_edge.backends import DEFAULT_EVERY_S, DEFAULT_WINDOW_S
from panda_edge.errors import PandaError
from panda_edge.optional import require
from panda_edge.runtime.options import RuntimeOptions
from panda_edge.runtime.video_runtime import VideoRuntime
from panda_edge.serving.app import ServeOptions, create_app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one), so a busy port is a clear error before anything runs."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PandaError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None
    sock.listen(128)
    return sock


def _server(app: Any, log_level: str) -> Any:
    uvicorn = require("uvicorn", "serve")
    config = uvicorn.Config(
        app, log_level=log_level, access_log=log_level == "debug", lifespan="on", timeout_graceful_shutdown=5
    )
    return uvicorn.Server(config)


def serve(app: Any, sock: socket.socket, log_level: str | None = None) -> None:
    """Answer until interrupted (Ctrl-C or SIGTERM: uvicorn finishes what runs, then the app closes).
    uvicorn logs at warning, or with each request (`access_log`) when panda_edge logs debug (`-v`)."""
    if log_level is None:
        log_level = "debug" if logging.getLogger("panda_edge").isEnabledFor(logging.DEBUG) else "warning"
    _server(app, log_level).run(sockets=[sock])


def serve_bundle(
    bundle: Path,
    runtime: RuntimeOptions,
    options: ServeOptions,
    host: str = "127.0.0.1",
    port: int = 8000,
    on_ready: Callable[[str, VideoRuntime], None] | None = None,
    streams: dict[str, str] | None = None,
    stream_window_s: float = DEFAULT_WINDOW_S,
    stream_every_s: float = DEFAULT_EVERY_S,
) -> None:
    """`panda serve`: listen first (a busy port fails in a second, not after loading the model), load
    the runtime, open the live `streams` ({name: source}), say where (`on_ready(url, runtime)`),
    answer until interrupted."""
    sock = bind(host, port)
    loaded = live = None
    try:
        loaded = runtime.open(bundle)
        if streams:
            from panda_edge.serving.streams import LiveStreams

            live = LiveStreams(loaded, streams, stream_window_s, stream_every_s)
            live.start()
        app = create_app(loaded, options, live)
    except BaseException:
        sock.close()
        if loaded is not None:
            loaded.close()
        raise
    address, bound = sock.getsockname()[:2]
    if on_ready is not None:
        on_ready(f"http://{address}:{bound}", app.state.runtime)
    serve(app, sock)


@contextmanager
def running_server(app: Any, host: str = "127.0.0.1", log_level: str = "warning") -> Iterator[str]:
    """The app served on a free local port from a thread; yields its base URL ("http://host:port")."""
    sock = bind(host, 0)
    server = _server(app, log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise PandaError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
