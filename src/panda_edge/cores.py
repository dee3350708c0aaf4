"""How many cores this process may use: thread pools (ONNX Runtime) and worker processes (toy world)."""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores this process may run on (the affinity mask in containers), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
