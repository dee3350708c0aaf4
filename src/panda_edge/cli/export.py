"""`panda export`: a checkpoint's vision part to ONNX, or its Llama backbone to GGUF, in one bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from panda_edge.calibration.ranges import DEFAULT_METHOD
from panda_edge.cli._common import (
    check_choice,
    emit_result,
    handle_errors,
    json_to_stdout,
    out,
    step_printer,
)
from panda_edge.cli.calibrate import HoldoutOption, MethodOption, SamplesOption, TargetOption

TARGETS = ("onnx", "trt", "gguf", "all")
PRECISIONS = ("fp32", "int8")


@handle_errors
def export(
    checkpoint: Annotated[str, typer.Option(help="Checkpoint directory, or 'tiny' for the embedded model.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Bundle directory to write (created if missing).")],
    target: Annotated[
        str,
        typer.Option(
            help="What to export: onnx (vision), trt (vision for TensorRT + build_engine.sh), gguf (LLM), "
            "all (onnx + gguf: what panda run needs)."
        ),
    ] = "onnx",
    trt_profile: Annotated[
        str,
        typer.Option(help="TensorRT the graph is for: 8.5 (JetPack 5, 6.0), 10 (JetPack 6.1, 6.2) or 11."),
    ] = "11",
    gguf_type: Annotated[
        str, typer.Option(help="GGUF storage for --target gguf: f32, f16, bf16, q8_0, q4_k_m, q5_k_m.")
    ] = "f16",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="--target gguf: print the tensor plan, write nothing.")
    ] = False,
    precision: Annotated[
        str | None,
        typer.Option(
            help="onnx/all: fp32 (default) or int8 (export, then calibrate as panda calibrate); "
            "trt: fp16 (default), int8 (calibrates) or fp32."
        ),
    ] = None,
    videos: Annotated[
        Path | None, typer.Option(help="--precision int8: directory of calibration videos.")
    ] = None,
    qa: Annotated[
        Path | None, typer.Option(help="--precision int8: QA JSON whose videos to calibrate on.")
    ] = None,
    samples: SamplesOption = 8,
    method: MethodOption = DEFAULT_METHOD,
    target_cosine: TargetOption = 0.99,
    holdout: HoldoutOption = 4,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the manifest as JSON ('-': stdout).")
    ] = None,
) -> None:
    """Export STAB + projector to BUNDLE/stab.onnx (static shapes, fp32) with manifest, tokenizer, prompt.

    The graph is checked for the TensorRT profile (opset, operators, static shapes); exit 1 and no
    graph written when a check fails, exit 2 for a bad checkpoint, profile or target.

    --target gguf writes the Llama backbone to BUNDLE/llm.<gguf-type>.gguf (llama architecture,
    SentencePiece vocabulary, chat template), one tensor at a time, and adds it to the manifest
    (an ONNX export already there is kept). q4_k_m/q5_k_m need llama-cpp-python (panda-edge[llama]).

    --target trt exports the graphs TensorRT builds for the profile (plus stab.fp16.onnx for the
    strongly typed 10/11, or the calibrated INT8 graph), writes BUNDLE/build_engine.sh (trtexec), and
    builds the engine when TensorRT and a GPU are here; otherwise it says how to finish on the device.

    --precision int8 then calibrates the graph on --videos DIR or --qa QA.json as panda calibrate
    does, adding stab.int8.onnx (TensorRT Q/DQ), stab.int8.cpu.onnx (ONNX Runtime) and calibration.npz.
    """
    from panda_edge.export.stab_onnx.pipeline import export_bundle
    from panda_edge.export.stab_onnx.profiles import get_profile

    check_choice("target", target, TARGETS)
    if target == "gguf":
        _export_gguf(checkpoint, out_dir, gguf_type, dry_run, json_out)
        return
    calibration = (videos, qa, samples, method, target_cosine, holdout)
    if target == "trt":
        _export_trt(checkpoint, out_dir, trt_profile, precision or "fp16", calibration, json_out)
        return
    precision = precision or "fp32"
    get_profile(trt_profile)  # a bad profile, precision or type fails before any loading
    check_choice("precision", precision, PRECISIONS)
    if precision == "int8":
        _check_calibration_source(videos, qa, method)
    if target == "all":
        from panda_edge.export.llm_gguf.pipeline import export_gguf, get_gguf_type

        get_gguf_type(gguf_type)
    quiet = json_to_stdout(json_out)
    manifest = export_bundle(checkpoint, out_dir, trt_profile, on_step=step_printer(quiet))
    if precision == "int8":
        from panda_edge.bundle import load_manifest
        from panda_edge.calibration.pipeline import calibrate_bundle

        calibrate_bundle(out_dir, *calibration, on_step=step_printer(quiet))
        manifest = load_manifest(out_dir)
    if target == "all":
        manifest = export_gguf(checkpoint, out_dir, gguf_type, on_step=step_printer(quiet))
    if emit_result(manifest, json_out):
        return
    vision = manifest["vision"]
    size = manifest["files"][vision["file"]]["size"]
    others = ", ".join(name for name in manifest["files"] if name != vision["file"])
    out.print(
        f"wrote {out_dir}: {vision['file']} ({size / 1e6:.1f} MB, opset {vision['opset']}, TensorRT "
        f"{vision['tensorrt']} profile, {vision['inputs']['frames']['shape']} -> "
        f"{vision['outputs']['visual_tokens']['shape']}), {others}, manifest.json"
    )
    if precision == "int8":
        from panda_edge.cli.calibrate import print_report

        print_report(out_dir, manifest["vision_int8"])


def _check_calibration_source(videos: Path | None, qa: Path | None, method: str) -> None:
    """Fail on a missing calibration source before the export, not after it."""
    from panda_edge.calibration.ranges import check_method
    from panda_edge.errors import PandaError

    check_method(method)
    if videos is None and qa is None:
        raise PandaError("--precision int8 needs calibration videos: --videos DIR or --qa QA.json")
    if qa is not None and not qa.is_file():
        raise PandaError(f"{qa}: no such QA file")
    if qa is None and not videos.is_dir():
        raise PandaError(f"{videos}: no such directory of videos")


def _export_gguf(
    checkpoint: str, out_dir: Path, gguf_type: str, dry_run: bool, json_out: Path | None
) -> None:
    """The Llama backbone to BUNDLE/llm.<type>.gguf (streamed; K-quants through llama.cpp)."""
    from panda_edge.export.llm_gguf.pipeline import export_gguf, get_gguf_type, gguf_plan

    get_gguf_type(gguf_type)  # a bad type fails before any reading
    quiet = json_to_stdout(json_out)
    if dry_run:
        plan = gguf_plan(checkpoint, gguf_type)
        if emit_result({"gguf_type": gguf_type, "tensors": plan}, json_out):
            return
        for t in plan:
            shape = "x".join(map(str, t["shape"]))
            note = " (q/k permuted)" if t["permuted"] else ""
            out.print(f"{t['source']} -> {t['gguf']}  {shape}  {t['source_dtype']} -> {t['type']}{note}")
        out.print(f"{len(plan)} tensors; nothing written (dry run)")
        return
    manifest = export_gguf(checkpoint, out_dir, gguf_type, on_step=step_printer(quiet))
    if emit_result(manifest, json_out):
        return
    entry = manifest["llm"]["gguf"][gguf_type]
    types = ", ".join(f"{n} {k}" for k, n in entry["tensor_types"].items())
    out.print(
        f"wrote {out_dir}: {entry['file']} ({entry['size'] / 1e6:.1f} MB, {entry['tensor_count']} tensors: "
        f"{types}), manifest.json lists {', '.join(manifest['files'])}"
    )


def _export_trt(
    checkpoint: str, out_dir: Path, profile: str, precision: str, calibration: tuple, json_out: Path | None
) -> None:
    """Graphs for TensorRT + build_engine.sh; the engine too when TensorRT and a GPU are here."""
    from panda_edge.export.stab_onnx.profiles import get_profile
    from panda_edge.export.trt.pipeline import export_trt
    from panda_edge.trt.versions import check_precision

    get_profile(profile)
    check_precision(precision)
    calibrate = None
    if precision == "int8":
        from panda_edge.calibration.pipeline import calibrate_bundle

        _check_calibration_source(calibration[0], calibration[1], calibration[3])
        calibrate = lambda bundle, on_step: calibrate_bundle(bundle, *calibration, on_step=on_step)  # noqa: E731
    quiet = json_to_stdout(json_out)
    result = export_trt(checkpoint, out_dir, profile, precision, step_printer(quiet), calibrate=calibrate)
    if emit_result(result, json_out):
        return
    files = ", ".join(result["manifest"]["files"])
    out.print(f"wrote {out_dir}: {files}, manifest.json")
    if result["built_here"]:
        engine = result["engine"]
        out.print(f"built {engine['file']} with TensorRT {engine['tensorrt']} on {engine['gpu']['name']}")
        return
    out.print(f"no engine built here: {result['not_built_because']}")
    out.print("TensorRT engines are built on the device that runs them. To finish:")
    for step in result["next_steps"]:
        out.print(f"  - {step}")
