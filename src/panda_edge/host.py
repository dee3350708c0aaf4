"""This machine: the cores this process may use (thread pools, worker processes), its CPU model and
notable features, its memory bandwidth (measured)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from panda_edge.timing import rate


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


def memory_bandwidth_gbs(megabytes: int = 512, repeat: int = 5) -> float | None:
    """Copy bandwidth in GB/s, counting the bytes read and the bytes written (median of `repeat`)."""
    src = np.ones(megabytes * 2**20 // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # touch every page first
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return rate(2 * src.nbytes / 1e9, statistics.median(times))


# CPU features that change INT8 (VNNI, AMX), llama.cpp (AVX-512, AMX) and sha256 (SHA-NI: the prefix
# cache's checksum) speeds a lot.
NOTABLE_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "sha_ni")


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: how busy the machine was while a benchmark ran."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_info() -> tuple[str, list[str]]:
    """The CPU's model name and which of NOTABLE_FEATURES it has (from /proc/cpuinfo on Linux)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return name, [f for f in NOTABLE_FEATURES if f in flags]
