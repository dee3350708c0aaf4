"""`panda export` as one call: a checkpoint into a bundle for one target (onnx, trt, gguf, all).

INT8 comes from the `calibrate(bundle, on_step)` the caller passes (`calibration.calibrate.
bundle_calibrator`): calibration runs graphs and judges them, a layer above export. Every choice
is checked before anything is read or written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from panda_edge.backends import (
    DEFAULT_GGUF_TYPE,
    DEFAULT_TRT_PROFILE,
    INT8,
    ORT,
    TRT,
    check_precision,
    default_precision,
    trt_target,
)
from panda_edge.bundle import load_manifest
from panda_edge.errors import PandaError
from panda_edge.export.llm_gguf.export_gguf import export_gguf, get_gguf_type
from panda_edge.export.stab_onnx.export_onnx import export_bundle
from panda_edge.export.trt.engines import export_trt

TARGETS = ("onnx", "trt", "gguf", "all")

Step = Callable[[str], None] | None
Calibrate = Callable[[Path, Step], Any]


def export_target(
    checkpoint: str | Path,
    out_dir: str | Path,
    target: str = "onnx",
    trt_profile: str = DEFAULT_TRT_PROFILE,
    gguf_type: str = DEFAULT_GGUF_TYPE,
    precision: str | None = None,
    calibrate: Calibrate | None = None,
    on_step: Step = None,
) -> dict[str, Any]:
    """Export `checkpoint` into the bundle `out_dir` for `target`; returns what `--json` writes: the
    manifest (onnx, gguf, all) or `export_trt`'s result (trt: manifest, engine, next steps).

    `precision`: onnx/all one that ONNX Runtime runs, trt one that TensorRT builds (backends.PRECISIONS,
    default first); int8 needs `calibrate`. `gguf_type` is the GGUF of gguf and all.
    """
    if target not in TARGETS:
        raise PandaError(f"unknown target '{target}'; choose one of: {', '.join(TARGETS)}")
    if target == "gguf":
        return export_gguf(checkpoint, out_dir, gguf_type, on_step=on_step)
    if target == "trt":
        return export_trt(
            checkpoint,
            out_dir,
            trt_profile,
            precision or default_precision(TRT),
            on_step,
            calibrate=calibrate,
        )
    precision = precision or default_precision(ORT)
    trt_target(trt_profile)  # a bad profile, precision or type fails before any loading
    check_precision(ORT, precision, f"--target {target}")
    if precision == INT8 and calibrate is None:
        raise PandaError("--precision int8 needs calibration videos: --videos DIR or --qa QA.json")
    if target == "all":
        get_gguf_type(gguf_type)
    manifest = export_bundle(checkpoint, out_dir, trt_profile, on_step=on_step)
    if precision == INT8:
        calibrate(Path(out_dir), on_step)
        manifest = load_manifest(out_dir)
    if target == "all":
        manifest = export_gguf(checkpoint, out_dir, gguf_type, on_step=on_step)
    return manifest
