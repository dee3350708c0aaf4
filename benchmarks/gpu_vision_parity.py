"""Vision parity on an NVIDIA GPU: the bundle's graphs through ONNX Runtime's CUDA provider, and the
TensorRT engines when TensorRT is here too, against the PyTorch reference on the parity clips.

    python benchmarks/gpu_vision_parity.py [--checkpoint tiny] [--out benchmarks/results/vision_gpu.json]

Levels written: stab_fp32 (stab.onnx, docs/design.md §5 thresholds), stab_fp16 (stab.fp16.onnx, reported
with panda-edge's own bar: cosine min >= 0.999), stab_int8 (the Q/DQ graph, once calibration is
available: mean cosine >= 0.99), and trt_<precision> for each engine built here. Needs
onnxruntime-gpu; `--allow-cpu` runs the same comparisons on the CPU provider to check this script
and writes only where --out says.
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

RESULTS = Path(__file__).parent / "results" / "vision_gpu.json"


def compare(reference, engine, clips: list[Path], vision, level: str, repeat: int = 3) -> dict[str, Any]:
    """Per-clip and overall numbers; `passed` by the level's rule, timing as the median of `repeat` runs."""
    from panda_edge.parity.compare import LEVELS, Thresholds, combine, compare_tokens
    from panda_edge.video import load_video

    # stab_fp16 is panda-edge's own bar; stab_int8 is judged on the mean cosine (docs/design.md §5).
    thresholds = {
        "stab_fp32": LEVELS["stab_fp32"],
        "stab_fp16": Thresholds(cosine_min=0.999, max_abs_rel=1e-2),
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


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default="tiny")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--allow-cpu", action="store_true")
    args = parser.parse_args()

    import onnxruntime as ort

    from panda_edge.errors import PandaError
    from panda_edge.export.trt.pipeline import build_engine, export_trt, int8_calibrator
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
    profile = family_for(status.tensorrt).profile if status.usable else "11"
    report: dict[str, Any] = {
        "checkpoint": args.checkpoint,
        "profile": profile,
        "onnxruntime": {"version": ort.__version__, "providers": providers},
        "tensorrt": status.to_dict(),
    }
    tower = VisionTower.from_checkpoint(args.checkpoint)
    with tempfile.TemporaryDirectory(prefix="panda-gpu-parity-") as tmp:
        bundle = Path(tmp) / "bundle"
        manifest = export_trt(args.checkpoint, bundle, profile, "fp16", build=False)["manifest"]
        try:
            manifest = int8_calibrator()(bundle, args.checkpoint)
        except PandaError as exc:
            report["stab_int8"] = {"skipped": str(exc)}
        clips = write_parity_clips(Path(tmp) / "clips", tower.config.vision.image_size)
        graphs = {"stab_fp32": "vision", "stab_fp16": "vision_fp16", "stab_int8": "vision_int8"}
        with TorchVisionReference(tower) as reference:
            for level, key in graphs.items():
                if key in manifest:
                    with OrtVisionEngine(bundle / manifest[key]["file"], providers=providers) as engine:
                        report[level] = compare(reference, engine, clips, tower.config.vision, level)
                    print(f"{level}: cosine min {report[level]['cosine_min']:.6f}", file=sys.stderr)
            if status.usable:
                for precision, level in (("fp16", "stab_fp16"), ("int8", "stab_int8"), ("fp32", "stab_fp32")):
                    try:
                        build_engine(bundle, precision)
                    except PandaError as exc:
                        report[f"trt_{precision}"] = {"skipped": str(exc)}
                        continue
                    with TrtVisionEngine(bundle, precision) as engine:
                        result = compare(reference, engine, clips, tower.config.vision, level)
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
