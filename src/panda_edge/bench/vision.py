"""Vision speed: PyTorch eager fp32 (the reference `encode_frames`) vs ONNX Runtime fp32 on the same
weights and video, side by side in one process (DESIGN.md §6). Random weights: speed does not
depend on them, and the 7B LLM is never built.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from panda_edge.config import ModelConfig, preset
from panda_edge.parity.clips import clip_frames
from panda_edge.parity.compare import LEVELS, compare_tokens
from panda_edge.video.preprocess import preprocess_frames


def timed_runs(run: Callable[[], object], repeat: int, warmup: int = 1) -> dict[str, Any]:
    """Milliseconds of `repeat` runs after `warmup` untimed ones."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return {
        "median_ms": round(statistics.median(times), 1),
        "min_ms": round(min(times), 1),
        "max_ms": round(max(times), 1),
        "runs_ms": [round(t, 1) for t in times],
    }


def bench_video(config: ModelConfig, seed: int = 0) -> np.ndarray:
    """One square video of `video_frames` real frames, pre-processed as `load_video` would."""
    v = config.vision
    return preprocess_frames(clip_frames(v.video_frames, v.image_size, v.image_size, seed), v)


def machine_info() -> dict[str, Any]:
    import onnxruntime
    import torch

    from panda_edge.bundle import tool_versions
    from panda_edge.runtime.vision.ort import available_cores

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores_available": available_cores(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ort_providers": onnxruntime.get_available_providers(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tools": tool_versions(),
    }


def bench_vision(
    preset_name: str = "full",
    repeat: int = 5,
    profile: str = "11",
    seed: int = 0,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Export a random-weight STAB + projector, then time both engines on one video."""
    from panda_edge.export.stab_onnx.convert import export_graph
    from panda_edge.model.vision import VisionTower
    from panda_edge.runtime.vision import OrtVisionEngine, TorchVisionReference

    step = on_step or (lambda message: None)
    config = preset(preset_name)
    tower = VisionTower.random(config, seed)
    frames = bench_video(config, seed)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="panda-bench-") as tmp:
        step(f"exporting the {preset_name} STAB + projector (random weights) to ONNX")
        path = Path(tmp) / "stab.onnx"
        export_graph(tower.stab, tower.projector, path, profile)
        with TorchVisionReference(tower) as torch_engine, OrtVisionEngine(path) as ort_engine:
            step(f"PyTorch eager fp32: 1 warm-up + {repeat} runs")
            torch_times = timed_runs(lambda: torch_engine.encode(frames), repeat)
            step(f"ONNX Runtime fp32: 1 warm-up + {repeat} runs")
            ort_times = timed_runs(lambda: ort_engine.encode(frames), repeat)
            parity = compare_tokens(
                torch_engine.encode(frames), ort_engine.encode(frames), "bench video", LEVELS["stab_fp32"]
            )
            threads, provider = ort_engine.threads, ort_engine.session.get_providers()[0]
    v = config.vision
    return {
        "vision": {
            "torch": {"backend": "PyTorch eager fp32 (VideoPanda.encode_frames)", **torch_times},
            "ort": {"backend": f"ONNX Runtime fp32, {provider}, {threads} intra-op threads", **ort_times},
        },
        "ratio_ort_vs_torch": round(torch_times["median_ms"] / ort_times["median_ms"], 3),
        "ratio_definition": "torch median / ort median (above 1: ONNX Runtime is faster)",
        "workload": {
            "preset": preset_name,
            "frames": v.video_frames,
            "image_size": v.image_size,
            "weights": f"random (seed {seed})",
            "visual_tokens": parity.tokens,
            "profile": profile,
            "repeat": repeat,
        },
        "parity": {
            "cosine_min": parity.cosine_min,
            "max_abs_rel": parity.max_abs_rel,
            "passed": parity.passed,
        },
        "machine": {
            **machine_info(),
            # Other work on the machine slows both engines; the load average says how busy it was.
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
    }
