"""How many cores this process may use: thread pools (ONNX Runtime) and worker processes (toy world)."""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores this process may run on (the affinity mask in containers), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def worker_count(workers: int | None, jobs: int) -> int:
    """How many workers to start for `jobs` jobs: `workers` if given (at least 1), else one per
    available core; never more than there are jobs, and at least one."""
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return max(1, min(workers or available_cores(), jobs))
