"""Vision parity on an NVIDIA GPU: the bundle's graphs through ONNX Runtime's CUDA provider, and the
TensorRT engines when TensorRT is here too, against the PyTorch reference on the parity clips.

    python benchmarks/gpu_vision_parity.py [--checkpoint tiny] [--out benchmarks/results/vision_gpu.json]

Levels written: stab_fp32 (stab.onnx, docs/design.md §5 thresholds), stab_fp16 (stab.fp16.onnx, reported
with panda-edge's own bar: cosine min >= 0.999), stab_int8 (calibrated here on clips other than the
parity clips, as `panda calibrate` does; the TensorRT Q/DQ graph on the GPU, the U8S8 graph on the
CPU; mean cosine >= 0.99), and trt_<precision> for each engine built here. Needs onnxruntime-gpu;
`--allow-cpu` runs the same comparisons on the CPU provider to check this script (the test suite
does, with --repeat 1) and writes only where --out says.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# The script's folder is on sys.path when it runs: the calibration clips of the INT8 parity scripts.
from int8_full_parity import CALIBRATION_CLIPS, calibration_clips

RESULTS = Path(__file__).parent / "results" / "vision_gpu.json"


def compare(reference, engine, clips: list[Path], vision, level: str, repeat: int = 3) -> dict[str, Any]:
    """Per-clip and overall numbers; `passed` by the level's rule, timing as the median of `repeat` runs."""
    from panda_edge.parity.compare import LEVELS, Thresholds, combine, compare_tokens
    from panda_edge.video import load_video

    # stab_fp16 is panda-edge's own bar; stab_int8 is judged on the mean cosine (docs/design.md §5).
    thresholds = {
        "stab_fp32": LEVELS["stab_fp32"],
        "stab_fp16": LEVELS["stab_fp16"],
        "stab_int8": Thresholds(cosine_min=0.0, max_abs_rel=float("inf")),
    }[level]

    results, times = [], []
    for clip in clips:
        frames = load_video(clip, vision)
        want = reference.encode(frames)
        engine.encode(frames)  # warm-up
        for _ in range(repeat):
            start = time.perf_counter()
            got = engine.encode(frames)
            times.append((time.perf_counter() - start) * 1e3)
        results.append(compare_tokens(want, got, clip.name, thresholds))
    overall = combine("all clips", results).to_dict()
    if level == "stab_int8":
        overall["passed"] = overall["cosine_mean"] is not None and overall["cosine_mean"] >= 0.99
    return {**overall, "median_ms": float(np.median(times)), "videos": [r.to_dict() for r in results]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default="tiny")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--allow-cpu", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per clip and graph")
    parser.add_argument("--samples", type=int, default=len(CALIBRATION_CLIPS), help="calibration clips")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from panda_edge.backends import DEFAULT_TRT_PROFILE, FP32, INT8, ORT, TRT
    from panda_edge.bundle import VISION_FP16, Manifest
    from panda_edge.calibration.calibrate import calibrate_bundle
    from panda_edge.errors import BundleError, PandaError
    from panda_edge.export.trt.engines import build_engine, export_trt
    from panda_edge.model.vision import VisionTower
    from panda_edge.parity.clips import write_parity_clips
    from panda_edge.runtime.vision import OrtVisionEngine, TorchVisionReference, TrtVisionEngine
    from panda_edge.trt.device import trt_status
    from panda_edge.trt.versions import family_for

    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if not cuda and not args.allow_cpu:
        print("no CUDAExecutionProvider (install onnxruntime-gpu), or pass --allow-cpu", file=sys.stderr)
        return 2
    out = args.out or (RESULTS if cuda else None)
    providers = ["CUDAExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    status = trt_status()
    profile = family_for(status.tensorrt).profile if status.usable else DEFAULT_TRT_PROFILE
    report: dict[str, Any] = {
        "checkpoint": args.checkpoint,
        "profile": profile,
        "onnxruntime": {"version": ort.__version__, "providers": providers},
        "tensorrt": status.to_dict(),
    }
    tower = VisionTower.from_checkpoint(args.checkpoint)
    with tempfile.TemporaryDirectory(prefix="panda-gpu-parity-") as tmp:
        bundle = Path(tmp) / "bundle"
        export_trt(args.checkpoint, bundle, profile, "fp16", build=False)
        calibration = calibration_clips(Path(tmp) / "calibration")
        report["calibration"] = calibrate_bundle(bundle, calibration, samples=args.samples, holdout=0)
        manifest = Manifest.load(bundle)
        clips = write_parity_clips(Path(tmp) / "clips", tower.config.vision.image_size)
        # The INT8 graph ONNX Runtime runs well: TensorRT's Q/DQ form on the GPU, U8S8 on the CPU.
        graphs = {
            "stab_fp32": lambda: manifest.vision_graph(ORT, FP32),
            "stab_fp16": lambda: manifest.path(manifest.graph(VISION_FP16).file),
            "stab_int8": lambda: manifest.vision_graph(TRT if cuda else ORT, INT8),
        }
        with TorchVisionReference(tower) as reference:
            for level, graph_of in graphs.items():
                try:
                    graph = graph_of()
                except BundleError as exc:  # stab.fp16.onnx: only for strongly typed TensorRT
                    report[level] = {"skipped": str(exc)}
                    continue
                with OrtVisionEngine(graph, providers=providers) as engine:
                    result = compare(reference, engine, clips, tower.config.vision, level, args.repeat)
                report[level] = {**result, "graph": graph.name}
                print(f"{level}: cosine min {report[level]['cosine_min']:.6f}", file=sys.stderr)
            if status.usable:
                for precision, level in (("fp16", "stab_fp16"), ("int8", "stab_int8"), ("fp32", "stab_fp32")):
                    try:
                        build_engine(bundle, precision)
                    except PandaError as exc:
                        report[f"trt_{precision}"] = {"skipped": str(exc)}
                        continue
                    with TrtVisionEngine(bundle, precision) as engine:
                        result = compare(reference, engine, clips, tower.config.vision, level, args.repeat)
                    report[f"trt_{precision}"] = {**result, "engine": engine.record}
    text = json.dumps(report, indent=2, default=str) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
