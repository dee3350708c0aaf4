"""This machine: the cores this process may use (thread pools, worker processes), its CPU model and
notable features, its memory bandwidth (measured)."""

from __future__ import annotations

import functools
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from panda_edge.timing import rate


def available_cores() -> int:
    """Cores this process may run on (the affinity mask in containers), not the host's count."""
    return len(_allowed_cpus())


def busy_cores(interval: float = 0.1) -> int:
    """How many of the cores this process may use other processes keep busy now: the non-idle share
    of each such core over `interval` seconds (/proc/stat), summed and rounded; 0 where unknown."""
    cores = _allowed_cpus()

    def sample() -> dict[int, tuple[int, int]]:  # cpu -> (busy, total) jiffies
        times = {}
        for line in Path("/proc/stat").read_text().splitlines():
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
                values = [int(v) for v in fields]
                idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
                times[int(name[3:])] = (sum(values[:8]) - idle, sum(values[:8]))
        return times

    try:
        before = sample()
        time.sleep(interval)
        after = sample()
    except (OSError, ValueError, IndexError):
        return 0
    share = 0.0
    for cpu, (busy, total) in after.items():
        if cpu in before and total > before[cpu][1]:
            share += (busy - before[cpu][0]) / (total - before[cpu][1])
    return min(len(cores), round(share))


def _allowed_cpus() -> set[int]:
    """The CPU ids of this process's affinity mask (every CPU where there is no such mask)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return set(range(os.cpu_count() or 1))


def default_threads(threads: int | None = None, steady: bool = False) -> int:
    """The one thread-count rule for PyTorch, ONNX Runtime and llama.cpp: `threads` when given (at
    least 1); else the cores this process may use that other processes do not keep busy, at least
    one. Their threads wait for each other at every parallel region, so a thread on a busy core
    stalls the rest (2 threads with one core held busy: the tiny reference 30x, a training step
    5-20x slower; docs/design.md §4). `steady`: all the cores this process may use, whatever the
    load, for work whose result depends on the thread count (training: same threads, same weights).
    OpenMP keeps its own spin-then-sleep waiting: passive waiting (OMP_WAIT_POLICY=PASSIVE) would
    protect against load that starts later, but it made llama.cpp's decode (an OpenMP build) 18x
    slower on the tiny model (9,300 -> 520 tokens/s) and the idle tiny reference 1.4x slower.
    """
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        return threads
    cores = available_cores()
    return cores if steady else max(1, cores - _busy_at_start())


@functools.cache
def _busy_at_start() -> int:
    """`busy_cores()` sampled once per process, so every pool in it gets the same count."""
    return busy_cores()


def use_threads(threads: int | None = None, steady: bool = False) -> int:
    """`default_threads(threads, steady)` applied to PyTorch's intra-op pool; returns the count,
    for ONNX Runtime and llama.cpp."""
    import torch

    count = default_threads(threads, steady)
    torch.set_num_threads(count)
    return count


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
