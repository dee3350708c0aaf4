"""What this machine can do at best, measured, so every result can be set against its limit.

Memory bandwidth (`host.memory_bandwidth_gbs`, a large array copy: decode reads every weight once
per token, so bandwidth bounds tokens/s) and fp32 matrix-multiply throughput (the vision part is
matmuls and convolutions, so this bounds its time). Both are measured with the thread count the
benchmarks use.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from panda_edge.host import memory_bandwidth_gbs
from panda_edge.timing import rate


def matmul_gflops(threads: int, n: int = 2048, repeat: int = 5) -> float | None:
    """fp32 GEMM throughput through PyTorch (the reference's own kernels), GFLOP/s."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return rate(2 * n**3 / 1e9, statistics.median(times))


def vision_gflop_per_video(preset_name: str = "full") -> float:
    """FLOPs (2 per multiply-add) of STAB + projector on one square video, counted by PyTorch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from panda_edge.bench.vision import bench_video
    from panda_edge.config import preset
    from panda_edge.model.vision import VisionTower

    config = preset(preset_name)
    tower = VisionTower(config).eval().requires_grad_(False)  # the counter's module hooks need no grads
    frames = torch.from_numpy(bench_video(config))
    with FlopCounterMode(display=False) as counter:
        tower.encode_frames(frames)
    return round(counter.get_total_flops() / 1e9, 1)


def limits(threads: int) -> dict[str, Any]:
    return {
        "memory_bandwidth_gbs": memory_bandwidth_gbs(),
        "fp32_matmul_gflops": matmul_gflops(threads),
        "threads": threads,
        "method": "bandwidth: 512 MiB numpy copy (read + write bytes); GEMM: 2048^3 fp32 torch matmul",
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss over an
    exec, so a child would report its parent's peak when that was higher."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: KiB (macOS: bytes)
