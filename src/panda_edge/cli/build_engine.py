"""`panda build-engine`: the bundle's graph -> a TensorRT engine for this GPU, recorded in the manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from panda_edge.backends import INT8, TRT, default_precision, precision_help
from panda_edge.bundle import MANIFEST_FILE, Manifest
from panda_edge.cli._common import emit_result, handle_errors, json_to_stdout, out, step_printer
from panda_edge.trt.record import GpuInfo


@handle_errors
def build_engine(
    bundle: Annotated[Path, typer.Option(help="Bundle directory (from panda export --target trt).")],
    precision: Annotated[
        str, typer.Option(help=f"{precision_help(TRT)} ({INT8} needs the calibrated Q/DQ graph).")
    ] = default_precision(TRT),
    workspace: Annotated[int, typer.Option(help="Builder workspace limit in MiB.")] = 1024,
    timing_cache: Annotated[
        Path | None,
        typer.Option(help="TensorRT timing cache file: read if present, written after the build."),
    ] = None,
    register: Annotated[
        Path | None,
        typer.Option(
            help="Record an engine built elsewhere (build_engine.sh / trtexec) instead of building."
        ),
    ] = None,
    trtexec_log: Annotated[
        Path | None,
        typer.Option(
            help="With --register: trtexec's log, which names its TensorRT and GPU (no TensorRT needed)."
        ),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the engine record as JSON ('-': stdout).")
    ] = None,
) -> None:
    """Build BUNDLE/stab.<gpu>.<precision>.engine with this machine's TensorRT and add it to the manifest.

    Engines are specific to one GPU model and one TensorRT release, so run this on the device. The
    graph and flags follow the installed TensorRT: 8.5/8.6 builder flags (FP16; INT8 + FP16 for the
    Q/DQ graph), 10.x strongly typed, 11.x no precision flags. Exit 2 when TensorRT, cuda-python or a
    GPU is missing, or the bundle lacks the graph; exit 1 when TensorRT fails to build it.
    """
    from panda_edge.errors import PandaError
    from panda_edge.export.trt.engines import build_engine as build
    from panda_edge.export.trt.engines import register_engine

    quiet = json_to_stdout(json_out)
    if trtexec_log is not None and register is None:
        raise PandaError("--trtexec-log goes with --register ENGINE")
    if register is not None:
        result = register_engine(bundle, register, precision, trtexec_log, on_step=step_printer(quiet))
    else:
        result = build(bundle, precision, workspace, timing_cache, on_step=step_printer(quiet))
    if emit_result(result["engine"], json_out):
        return
    manifest = Manifest.from_dict(result["manifest"], bundle)
    engine = manifest.engine_for(result["engine"])
    size, gpu = manifest.files[engine.file].size, GpuInfo.from_dict(engine.gpu)
    out.print(
        f"{bundle / engine.file}: {engine.precision} engine ({size / 1e6:.1f} MB) for {gpu}, "
        f"TensorRT {engine.tensorrt}, from {engine.source_file}; recorded in {bundle / MANIFEST_FILE}"
    )
