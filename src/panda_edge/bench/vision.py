"""Vision speed: PyTorch eager fp32 (the reference `encode_frames`) vs ONNX Runtime fp32 and INT8 on
the same weights and video, side by side in one process (docs/design.md §6). Random weights: speed does
not depend on them, and the 7B LLM is never built. The INT8 graphs are calibrated on other clips
of the same kind, and their tokens are compared with PyTorch's on the bench video.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from panda_edge.backends import DEFAULT_TRT_PROFILE
from panda_edge.calibration.ranges import DEFAULT_METHOD
from panda_edge.config import ModelConfig, preset
from panda_edge.parity.clips import clip_frames
from panda_edge.parity.compare import LEVELS, compare_tokens
from panda_edge.timing import BELOW_RESOLUTION, median_s, rate, significant, time_ratio
from panda_edge.video.preprocess import preprocess_frames


def bench_video(config: ModelConfig, seed: int = 0) -> np.ndarray:
    """One square video of `video_frames` real frames, pre-processed as `load_video` would."""
    v = config.vision
    return preprocess_frames(clip_frames(v.video_frames, v.image_size, v.image_size, seed), v)


def machine_info() -> dict[str, Any]:
    import onnxruntime
    import torch

    from panda_edge.bundle import tool_versions
    from panda_edge.host import available_cores, cpu_info

    cpu, features = cpu_info()
    return {
        "cpu": cpu,
        "cpu_features": features,
        "cores_available": available_cores(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ort_providers": onnxruntime.get_available_providers(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tools": tool_versions(),
    }


def interleaved_runs(
    runs: dict[str, Callable[[], object]], repeat: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds of `repeat` runs of each engine after `warmup` untimed ones, one run of each per
    round: load from other work on the machine then slows every engine alike, not whichever ran
    while it lasted. Unrounded: ratios are computed from these, and rounding comes last."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def summary_ms(runs_s: list[float]) -> dict[str, Any]:
    """The report's view of one engine's runs: milliseconds to 4 significant digits (never 0 for a
    run that took any measurable time)."""
    return {
        "median_ms": significant(statistics.median(runs_s) * 1e3),
        "min_ms": significant(min(runs_s) * 1e3),
        "max_ms": significant(max(runs_s) * 1e3),
        "runs_ms": [significant(x * 1e3) for x in runs_s],
    }


def ratios(times: dict[str, list[float]], pairs: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """{key: median of the first / median of the second} from unrounded times; a ratio whose time
    is too short to measure is None, and `unmeasured` says why."""
    result: dict[str, Any] = {}
    unmeasured = {}
    for key, (slow, fast) in pairs.items():
        result[key] = time_ratio(median_s(times[slow]), median_s(times[fast]))
        if result[key] is None:
            unmeasured[key] = BELOW_RESOLUTION
    if unmeasured:
        result["unmeasured"] = unmeasured
    return result


BACKENDS = {
    "torch": "PyTorch eager fp32 (VideoPanda.encode_frames)",
    "ort": "ONNX Runtime fp32",
    "ort_int8": "ONNX Runtime INT8, CPU form (stab.int8.cpu.onnx: U8S8 Q/DQ)",
    "ort_int8_tensorrt": "ONNX Runtime INT8, TensorRT form (stab.int8.onnx: S8S8 Q/DQ)",
}


def bench_vision(
    preset_name: str = "full",
    repeat: int = 5,
    profile: str = DEFAULT_TRT_PROFILE,
    seed: int = 0,
    on_step: Callable[[str], None] | None = None,
    int8: bool = True,
    calibration_videos: int = 4,
    method: str = DEFAULT_METHOD,
    threads: int | None = None,
) -> dict[str, Any]:
    """Export a random-weight STAB + projector (and, with `int8`, calibrate it on `calibration_videos`
    other clips), then time every engine on one video, interleaved, each on the same `threads`
    (None: host.default_threads)."""
    from panda_edge.backends import trt_target
    from panda_edge.calibration.ranges import check_method
    from panda_edge.export.stab_onnx.convert import export_graph
    from panda_edge.host import use_threads
    from panda_edge.model.vision import VisionTower
    from panda_edge.runtime.vision import OrtVisionEngine, TorchVisionReference

    config = preset(preset_name)  # a bad preset, profile or method fails before anything is built
    trt_target(profile)
    check_method(method)
    threads = use_threads(threads)  # PyTorch's pool, and ONNX Runtime's below
    step = on_step or (lambda message: None)
    tower = VisionTower.random(config, seed)
    frames = bench_video(config, seed)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="panda-bench-") as tmp:
        step(f"exporting the {preset_name} STAB + projector (random weights) to ONNX")
        path = Path(tmp) / "stab.onnx"
        export_graph(tower.stab, tower.projector, path, profile)
        engines = {"ort": OrtVisionEngine(path, threads=threads)}
        calibration = None
        if int8:
            calibration, int8_paths = _calibrate(path, config, seed, calibration_videos, method, step)
            engines["ort_int8"] = OrtVisionEngine(int8_paths["cpu"], threads=threads)
            engines["ort_int8_tensorrt"] = OrtVisionEngine(int8_paths["tensorrt"], threads=threads)
        with TorchVisionReference(tower) as torch_engine, contextlib.ExitStack() as stack:
            for engine in engines.values():
                stack.enter_context(engine)
            runs = {"torch": lambda: torch_engine.encode(frames)}
            runs.update({name: (lambda e=e: e.encode(frames)) for name, e in engines.items()})
            step(f"timing {', '.join(runs)}: 1 warm-up + {repeat} rounds, interleaved")
            times = interleaved_runs(runs, repeat)
            step("comparing each engine's tokens with PyTorch's")
            reference = torch_engine.encode(frames)
            parity = compare_tokens(
                reference, engines["ort"].encode(frames), "bench video", LEVELS["stab_fp32"]
            )
            int8_parity = {}
            if int8:
                with OrtVisionEngine(int8_paths["tensorrt"], qdq_in_float=True) as simulated:
                    candidates = {"cpu": engines["ort_int8"], "tensorrt": simulated}
                    for form, engine in candidates.items():
                        result = compare_tokens(reference, engine.encode(frames), form, LEVELS["stab_int8"])
                        int8_parity[form] = _int8_entry(result)
            threads, provider = engines["ort"].threads, engines["ort"].session.get_providers()[0]
    if int8:
        step("timing one projector-sized GEMM alone, fp32 vs INT8 (the ceiling of the INT8 gain)")
        ceiling = gemm_ceiling(repeat, rows=parity.tokens, width=config.llm.hidden_size)
    v = config.vision
    vision = {
        name: {
            "backend": BACKENDS[name] + ("" if name == "torch" else f", {provider}, {threads} threads"),
            **summary_ms(t),
        }
        for name, t in times.items()
    }
    pairs = {"ratio_ort_vs_torch": ("torch", "ort")}
    if int8:
        pairs["ratio_ort_int8_vs_torch"] = ("torch", "ort_int8")
        pairs["ratio_ort_int8_vs_ort"] = ("ort", "ort_int8")
        pairs["ratio_ort_int8_tensorrt_vs_torch"] = ("torch", "ort_int8_tensorrt")
    result: dict[str, Any] = {
        "vision": vision,
        **ratios(times, pairs),
        "ratio_definition": "median of the first / median of the second (above 1: the second is faster)",
    }
    if int8:
        result["gemm_ceiling"] = ceiling
        result["int8"] = {
            **calibration,
            "stab_int8": {
                "reference": "PyTorch eager fp32 on the bench video (not a calibration video)",
                "cpu": int8_parity["cpu"],
                "tensorrt": {**int8_parity["tensorrt"], "note": "TensorRT form, Q/DQ computed in float"},
            },
        }
    result["workload"] = {
        "preset": preset_name,
        "frames": v.video_frames,
        "image_size": v.image_size,
        "weights": f"random (seed {seed})",
        "visual_tokens": parity.tokens,
        "profile": profile,
        "repeat": repeat,
    }
    result["parity"] = {
        "cosine_min": parity.cosine_min,
        "max_abs_rel": parity.max_abs_rel,
        "passed": parity.passed,
    }
    result["machine"] = {
        **machine_info(),
        # Other work on the machine slows the engines; the load average says how busy it was.
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    return result


def gemm_ceiling(repeat: int, rows: int = 2184, width: int = 4096, seed: int = 0) -> dict[str, Any]:
    """The projector's second Linear alone (rows x width x width), fp32 vs the CPU form's U8S8 Q/DQ, in
    ONNX Runtime: the most INT8 can gain on this CPU, since the graph's INT8 time is mostly such GEMMs."""
    from onnx import TensorProto, helper, numpy_helper

    from panda_edge.calibration.qdq import CPU, QdqWriter
    from panda_edge.host import default_threads
    from panda_edge.optional import onnxruntime
    from panda_edge.runtime.vision.ort import session_options

    ort = onnxruntime()

    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((width, width)) * width**-0.5).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="gemm")],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, width])],
        [numpy_helper.from_array(weight, "w")],
    )
    fp32 = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    int8 = QdqWriter(fp32, {"x": (-4.0, 4.0), "y": (-4.0, 4.0)}).write(["gemm"], CPU)
    x = rng.standard_normal((rows, width)).astype(np.float32)
    options = session_options(default_threads())
    sessions = {
        name: ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for name, m in (("fp32", fp32), ("int8_u8s8", int8))
    }
    times = interleaved_runs(
        {name: (lambda s=s: s.run(None, {"x": x})) for name, s in sessions.items()}, repeat
    )
    return gemm_report(times, rows, width)


def gemm_report(times: dict[str, list[float]], rows: int, width: int) -> dict[str, Any]:
    """The GEMM ceiling's numbers from its unrounded run times (seconds): medians, GOP/s, the ratio."""
    ops = 2 * rows * width * width
    medians = {name: median_s(t) for name, t in times.items()}
    report: dict[str, Any] = {
        "shape": f"({rows} x {width}) @ ({width} x {width})",
        **{f"{name}_median_ms": significant(m * 1e3) for name, m in medians.items()},
        **{f"{name}_gop_s": rate(ops / 1e9, m) for name, m in medians.items()},
        **ratios(times, {"ratio_int8_vs_fp32": ("fp32", "int8_u8s8")}),
    }
    unmeasured = {key: BELOW_RESOLUTION for key, value in report.items() if value is None}
    if unmeasured:
        report["unmeasured"] = {**report.get("unmeasured", {}), **unmeasured}
    return report


def _int8_entry(result: Any) -> dict[str, Any]:
    return {
        "cosine_mean": result.cosine_mean,
        "cosine_min": result.cosine_min,
        "cosine_histogram": result.cosine_histogram,
        "passed": result.passed,
    }


def _calibrate(
    path: Path, config: ModelConfig, seed: int, videos: int, method: str, step: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Both INT8 forms of the graph at `path`, calibrated on `videos` clips other than the bench's."""
    import onnx

    from panda_edge.calibration.calibrate import calibrate_graph

    start = time.perf_counter()
    clips = np.stack([bench_video(config, seed + 1 + i) for i in range(videos)])
    graphs = calibrate_graph(path, clips, method, on_step=step)
    paths = {"tensorrt": path.with_name("stab.int8.onnx"), "cpu": path.with_name("stab.int8.cpu.onnx")}
    onnx.save(graphs.tensorrt, str(paths["tensorrt"]))
    onnx.save(graphs.cpu, str(paths["cpu"]))
    precision = graphs.precision
    return {
        "method": method,
        "calibration_videos": videos,
        "calibration_s": round(time.perf_counter() - start, 1),
        "float_groups": precision.float_groups,
        "quantized_nodes": len(precision.quantized_nodes),
        "quantizable_nodes": graphs.quantizable_nodes,
        "calibration_set": {
            "tensorrt": {
                "cosine_mean": precision.tensorrt.cosine_mean,
                "cosine_min": precision.tensorrt.cosine_min,
            },
            "cpu": {"cosine_mean": precision.cpu.cosine_mean, "cosine_min": precision.cpu.cosine_min},
        },
        "groups": {
            name: {"alone_cosine_mean": g.alone.cosine_mean, "precision": g.precision}
            for name, g in precision.groups.items()
        },
    }, paths
