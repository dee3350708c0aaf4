"""`panda export --target trt` and `panda build-engine`: bundle graphs -> engine -> manifest record.

`build_engine` and `register_engine` run on the device (no torch, no onnx package); `export_trt`
runs where the checkpoint is, exports the graphs, writes `build_engine.sh`, and builds the engine
only when TensorRT and a GPU of the bundle's TensorRT family are present. The manifest is rewritten
last and atomically; files it already lists were verified when it was loaded and keep their records.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from panda_edge.backends import DEFAULT_TRT_PROFILE, FP16, INT8, TRT, TRT_TARGETS, check_precision, trt_target
from panda_edge.bundle import MANIFEST_FILE, VISION, VISION_FP16, Manifest
from panda_edge.errors import BundleError, CheckFailed, PandaError
from panda_edge.export.trt.script import DEFAULT_PRECISION, SCRIPT_FILE, build_script
from panda_edge.fileio import atomic_path
from panda_edge.trt.build_recipe import DEFAULT_WORKSPACE_MB, Recipe, engine_file_name, recipe_for
from panda_edge.trt.device import TrtUnavailable, trt_status
from panda_edge.trt.record import (
    GpuInfo,
    engine_record,
    log_problems,
    parse_trtexec_log,
)
from panda_edge.trt.versions import TrtVersion, family_for

FP16_ONNX_FILE = "stab.fp16.onnx"
Step = Callable[[str], None] | None


def _step(on_step: Step) -> Callable[[str], None]:
    return on_step or (lambda message: None)


def _where_to_build(bundle: Path) -> str:
    return (
        f"build on the device that will run the engine: panda build-engine --bundle {bundle} there "
        f"(TensorRT Python + cuda-python), or {bundle / SCRIPT_FILE} (trtexec)"
    )


# --- panda build-engine -----------------------------------------------------------------------------


def build_engine(
    bundle: str | Path,
    precision: str = DEFAULT_PRECISION,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    timing_cache: str | Path | None = None,
    on_step: Step = None,
) -> dict[str, Any]:
    """Build `stab.<gpu>.<precision>.engine` with the installed TensorRT; returns {engine, manifest}."""
    from panda_edge.export.trt.build import build_serialized_engine, inspect_engine

    bundle, step = Path(bundle), _step(on_step)
    check_precision(TRT, precision, "TensorRT")
    if workspace_mb < 1:
        raise PandaError(f"--workspace must be a positive number of MiB, not {workspace_mb}")
    status = trt_status()
    if not status.usable:
        raise TrtUnavailable(f"no engine can be built here: {status.reason}. {_where_to_build(bundle)}")
    manifest = Manifest.load(bundle)
    version = TrtVersion.parse(status.tensorrt)
    recipe = recipe_for(manifest, family_for(version), precision, bundle=str(bundle))
    step(f"TensorRT {version} on {status.gpu}: {recipe.onnx_file} -> {precision} engine")
    data = build_serialized_engine(
        manifest.path(recipe.onnx_file),
        recipe,
        workspace_mb,
        Path(timing_cache) if timing_cache is not None else None,
        on_step=step,
    )
    info = inspect_engine(data)
    inputs, outputs = manifest.graph_io(recipe.graph_key)
    _check_shapes(info, manifest, recipe.graph_key)
    name = engine_file_name(status.gpu.name, precision)
    with atomic_path(bundle / name) as tmp:
        tmp.write_bytes(data)
    record = engine_record(
        file=name,
        recipe=recipe,
        version=version,
        gpu=status.gpu,
        source_sha256=manifest.sha256(recipe.onnx_file),
        inputs=inputs,
        outputs=outputs,
        workspace_mb=workspace_mb,
        builder="tensorrt-python",
        device_memory_bytes=info["device_memory_bytes"],
    )
    step(f"wrote {name}; recording it in the manifest")
    return {"engine": record, "manifest": manifest.with_engine(record).to_dict()}


def _check_shapes(info: dict[str, Any], manifest: Manifest, section: str) -> None:
    """The engine's tensors (TensorRT's inspection) against the graph's, as the manifest records them."""
    inputs, outputs = manifest.graph_shapes(section)
    for kind, expected, got in (("input", inputs, info["inputs"]), ("output", outputs, info["outputs"])):
        shapes = {n: list(s["shape"]) for n, s in got.items()}
        if shapes != expected:
            raise CheckFailed(f"the engine's {kind}s are {shapes}, the graph's {expected}")


def register_engine(
    bundle: str | Path,
    engine: str | Path,
    precision: str = DEFAULT_PRECISION,
    trtexec_log: str | Path | None = None,
    on_step: Step = None,
) -> dict[str, Any]:
    """Record an engine built outside panda-edge (`build_engine.sh`): named for its GPU, hashed in.

    With `trtexec_log`, the TensorRT version and GPU come from trtexec's own log, and the log must
    show this precision's graph and options; without it, TensorRT here inspects the engine.
    """
    bundle, step = Path(bundle), _step(on_step)
    check_precision(TRT, precision, "TensorRT")
    manifest = Manifest.load(bundle)
    path = _find_engine(bundle, Path(engine))
    extra: dict[str, Any] = {}
    if trtexec_log is not None:
        log_path = Path(trtexec_log)
        if not log_path.is_file():
            raise PandaError(f"{log_path}: no such trtexec log")
        log = parse_trtexec_log(log_path.read_text(encoding="utf-8", errors="replace"))
        if log.version is None or log.gpu is None:
            raise BundleError(f"{log_path}: not a trtexec log (no TensorRT version or device in it)")
        version, gpu = log.version, log.gpu
        recipe = recipe_for(manifest, family_for(version), precision, bundle=str(bundle))
        problems = log_problems(log, recipe, path.name)
        if problems:
            raise BundleError(f"{log_path}: " + "; ".join(problems))
        inputs, outputs = manifest.graph_io(recipe.graph_key)
        workspace = _workspace_from(log.option("--memPoolSize"))
        if log.gpu_compute_median_ms is not None:
            extra["trtexec_gpu_compute_median_ms"] = log.gpu_compute_median_ms
        builder = "trtexec"
    else:
        version, gpu, recipe, inputs, outputs, workspace, extra = _inspect_here(
            manifest, bundle, path, precision
        )
        builder = "external"
    name = engine_file_name(gpu.name, precision)
    step(f"{path.name}: TensorRT {version} on {gpu} -> {name}")
    _move_into(path, bundle / name)
    record = engine_record(
        file=name,
        recipe=recipe,
        version=version,
        gpu=gpu,
        source_sha256=manifest.sha256(recipe.onnx_file),
        inputs=inputs,
        outputs=outputs,
        workspace_mb=workspace,
        builder=builder,
        **extra,
    )
    return {"engine": record, "manifest": manifest.with_engine(record).to_dict()}


def _find_engine(bundle: Path, engine: Path) -> Path:
    for candidate in (engine, bundle / engine.name):
        if candidate.is_file():
            return candidate
    raise PandaError(f"{engine}: no such engine file")


def _workspace_from(pool: str | None) -> int | None:
    """'workspace:1024' (MiB) -> 1024; None when trtexec ran with its default."""
    if pool is None:
        return None
    for spec in pool.split(","):
        name, _, size = spec.partition(":")
        if name == "workspace" and size.replace(".", "", 1).isdigit():
            return int(float(size))
    return None


def _inspect_here(
    manifest: Manifest, bundle: Path, path: Path, precision: str
) -> tuple[TrtVersion, GpuInfo, Recipe, dict, dict, int | None, dict[str, Any]]:
    from panda_edge.export.trt.build import inspect_engine

    status = trt_status()
    if not status.usable:
        raise TrtUnavailable(
            f"give --trtexec-log (the log trtexec wrote) to register {path.name} without TensorRT's Python "
            f"bindings; here: {status.reason}"
        )
    version = TrtVersion.parse(status.tensorrt)
    recipe = recipe_for(manifest, family_for(version), precision, bundle=str(bundle))
    info = inspect_engine(path.read_bytes())
    inputs, outputs = manifest.graph_io(recipe.graph_key)
    _check_shapes(info, manifest, recipe.graph_key)
    return (
        version,
        status.gpu,
        recipe,
        inputs,
        outputs,
        None,
        {"device_memory_bytes": info["device_memory_bytes"]},
    )


def _move_into(source: Path, target: Path) -> None:
    if source.resolve() == target.resolve():
        return
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    os.unlink(source)


# --- panda export --target trt ----------------------------------------------------------------------


def write_fp16_graph(manifest: Manifest, on_step: Step = None) -> Manifest:
    """BUNDLE/stab.fp16.onnx from the fp32 graph, checked for the bundle's profile (needs onnx)."""
    from panda_edge.export.stab_onnx.check import check_onnx
    from panda_edge.export.stab_onnx.fp16 import FP32_OPS, convert_file

    vision, bundle = manifest.vision, manifest.root
    _step(on_step)(f"writing {FP16_ONNX_FILE} (fp16, LayerNorm in fp32) for strongly typed TensorRT")
    with atomic_path(bundle / FP16_ONNX_FILE) as tmp:
        convert_file(manifest.path(vision.file), tmp)
        problems = check_onnx(tmp, str(vision.profile))
        if problems:
            raise CheckFailed(
                f"the fp16 graph fails the TensorRT {vision.tensorrt} checks: " + "; ".join(problems)
            )
    inputs, outputs = manifest.graph_io(VISION)
    entry = {
        "file": FP16_ONNX_FILE,
        "source": vision.file,
        "profile": vision.profile,
        "tensorrt": vision.tensorrt,
        "opset": vision.opset,
        "precision": FP16,
        "fp32_ops": sorted(FP32_OPS),
        "inputs": inputs,
        "outputs": outputs,
    }
    return manifest.extend({VISION_FP16: entry}, [FP16_ONNX_FILE])


def write_build_script(manifest: Manifest) -> Manifest:
    """BUNDLE/build_engine.sh for the graphs the manifest lists now (executable), hashed in."""
    bundle = manifest.root
    with atomic_path(bundle / SCRIPT_FILE) as tmp:
        tmp.write_text(build_script(manifest), encoding="utf-8")
    os.chmod(bundle / SCRIPT_FILE, 0o755)
    return manifest.extend({}, [SCRIPT_FILE])


def export_trt(
    checkpoint: str | Path,
    out_dir: str | Path,
    profile: str = DEFAULT_TRT_PROFILE,
    precision: str = DEFAULT_PRECISION,
    on_step: Step = None,
    build: bool = True,
    calibrate: Callable[[Path, Step], Any] | None = None,
) -> dict[str, Any]:
    """Graphs for `profile` (+ fp16 or INT8 form), build_engine.sh, and the engine when possible here.

    `calibrate(bundle, on_step)` adds the INT8 graphs (`panda calibrate`'s work); int8 needs it.
    Returns {manifest, engine (record or None), tensorrt (status), built_here, next_steps}.
    """
    from panda_edge.export.stab_onnx.export_onnx import export_bundle

    check_precision(TRT, precision, "TensorRT")
    family = trt_target(profile)
    if precision == INT8 and calibrate is None:
        raise PandaError("--precision int8 calibrates the graph: give --videos DIR or --qa QA.json")
    bundle = Path(out_dir)
    manifest = Manifest.from_dict(export_bundle(checkpoint, bundle, profile, on_step=on_step), bundle)
    if family.graphs[precision] == VISION_FP16:
        manifest = write_fp16_graph(manifest, on_step)
    if precision == INT8:
        calibrate(bundle, on_step)
        manifest = Manifest.load(bundle)
    manifest = write_build_script(manifest)
    status = trt_status() if build else None
    result: dict[str, Any] = {
        "manifest": manifest.to_dict(),
        "engine": None,
        "tensorrt": status.to_dict() if status else None,
        "built_here": False,
    }
    reason = _why_not_here(status, family)
    if reason is None:
        built = build_engine(bundle, precision, on_step=on_step)
        result.update(manifest=built["manifest"], engine=built["engine"], built_here=True)
        engine = Manifest.from_dict(built["manifest"], bundle).engine_for(built["engine"])
        result["next_steps"] = [
            f"{engine.file} is recorded in {bundle / MANIFEST_FILE}; the trt vision backend "
            "runs it on this GPU with this TensorRT"
        ]
        return result
    result["not_built_because"] = reason
    result["next_steps"] = [
        f"copy {bundle} to the device (it holds the graphs for {family.label}, profile {profile}: "
        f"{family.platform})",
        f"there: panda build-engine --bundle {bundle.name} --precision {precision}   "
        "(TensorRT Python bindings + cuda-python)",
        f"or there: {bundle.name}/{SCRIPT_FILE} {precision}   (trtexec; records the engine with panda)",
        "another TensorRT needs another export: "
        + ", ".join(
            f"{f.platform} --trt-profile {f.profile}" for f in TRT_TARGETS.values() if f is not family
        ),
    ]
    return result


def _why_not_here(status, family) -> str | None:
    if status is None:
        return "the build was not asked for"
    if not status.usable:
        return status.reason
    here = family_for(status.tensorrt)
    if here is not family:
        return (
            f"this machine has TensorRT {status.tensorrt}, which builds profile {here.profile} graphs, "
            f"not profile {family.profile}"
        )
    return None
