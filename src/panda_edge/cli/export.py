"""`panda export`: a checkpoint's vision part to ONNX, or its Llama backbone to GGUF, in one bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from panda_edge.backends import (
    DEFAULT_GGUF_TYPE,
    DEFAULT_TRT_PROFILE,
    GGUF_TYPES,
    INT8,
    ORT,
    TRT,
    listed,
    precision_help,
    trt_profile_help,
)
from panda_edge.bundle import VISION_INT8, Manifest
from panda_edge.calibration.ranges import DEFAULT_METHOD
from panda_edge.cli._common import emit_result, handle_errors, json_to_stdout, out, step_printer
from panda_edge.cli.calibrate import HoldoutOption, MethodOption, SamplesOption, TargetOption
from panda_edge.errors import PandaError


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
        typer.Option(help=f"TensorRT the graph is for: {trt_profile_help()}."),
    ] = DEFAULT_TRT_PROFILE,
    gguf_type: Annotated[
        str, typer.Option(help=f"GGUF storage for --target gguf: {listed(GGUF_TYPES)}.")
    ] = DEFAULT_GGUF_TYPE,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="--target gguf: print the tensor plan, write nothing.")
    ] = False,
    precision: Annotated[
        str | None,
        typer.Option(
            help=f"onnx/all: {precision_help(ORT)} (int8: export, then calibrate as panda calibrate); "
            f"trt: {precision_help(TRT)} (int8 calibrates)."
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
    lora: Annotated[
        Path | None,
        typer.Option(
            "--lora",
            help="--target gguf/all: also write BUNDLE/lora.gguf, a llama.cpp LoRA GGUF of this adapter "
            "directory (panda finetune's OUT/adapter; --checkpoint must be its base). Run it with --lora.",
        ),
    ] = None,
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
    from panda_edge.calibration.calibrate import bundle_calibrator
    from panda_edge.export.target import export_target

    quiet = json_to_stdout(json_out)
    if lora is not None and target not in ("gguf", "all"):
        raise PandaError("--lora goes with --target gguf or all: the adapter is for the Llama's GGUF")
    lora_llm = None
    if lora is not None and not dry_run:
        from panda_edge.export.llm_gguf.lora_gguf import check_lora_base

        lora_llm = check_lora_base(checkpoint, lora)  # exit 2 before anything is written
    if target == "gguf" and dry_run:
        _gguf_plan(checkpoint, gguf_type, json_out)
        return
    calibrate = None
    if precision == INT8 and target != "gguf":
        options = {"samples": samples, "method": method, "target_cosine": target_cosine, "holdout": holdout}
        calibrate = bundle_calibrator(videos, qa, **options)
    result = export_target(
        checkpoint, out_dir, target, trt_profile, gguf_type, precision, calibrate, step_printer(quiet)
    )
    adapter = None
    if lora_llm is not None:
        from panda_edge.export.llm_gguf.lora_gguf import LORA_GGUF, write_lora_gguf

        adapter = write_lora_gguf(lora, out_dir / LORA_GGUF, lora_llm)
        result = {**result, "lora": adapter}
    if emit_result(result, json_out):
        return
    if adapter is not None:
        out.print(
            f"wrote {out_dir / adapter['file']}: LoRA rank {adapter['rank']}, alpha {adapter['alpha']:g}, "
            f"{adapter['tensors']} tensors (panda run/chat/serve/eval --lora {out_dir / adapter['file']})"
        )
    if target == "gguf":
        _print_gguf(out_dir, result, gguf_type)
    elif target == "trt":
        _print_trt(out_dir, result)
    else:
        _print_onnx(out_dir, result)


def _print_onnx(out_dir: Path, result: dict) -> None:
    manifest = Manifest.from_dict(result, out_dir)
    vision = manifest.vision
    size = manifest.files[vision.file].size
    others = ", ".join(name for name in manifest.files if name != vision.file)
    frames, tokens = manifest.io_shapes()
    out.print(
        f"wrote {out_dir}: {vision.file} ({size / 1e6:.1f} MB, opset {vision.opset}, TensorRT "
        f"{vision.tensorrt} profile, {frames} -> {tokens}), {others}, manifest.json"
    )
    if manifest.has_graph(VISION_INT8):
        from panda_edge.cli.calibrate import print_report

        print_report(out_dir, manifest.int8_report())


def _gguf_plan(checkpoint: str, gguf_type: str, json_out: Path | None) -> None:
    """--dry-run: the tensor plan from the checkpoint's headers; nothing written."""
    from panda_edge.export.llm_gguf.export_gguf import gguf_plan

    plan = gguf_plan(checkpoint, gguf_type)
    if emit_result({"gguf_type": gguf_type, "tensors": plan}, json_out):
        return
    for t in plan:
        shape = "x".join(map(str, t["shape"]))
        note = " (q/k permuted)" if t["permuted"] else ""
        out.print(f"{t['source']} -> {t['gguf']}  {shape}  {t['source_dtype']} -> {t['type']}{note}")
    out.print(f"{len(plan)} tensors; nothing written (dry run)")


def _print_gguf(out_dir: Path, result: dict, gguf_type: str) -> None:
    manifest = Manifest.from_dict(result, out_dir)
    gguf = manifest.gguf(gguf_type)
    types = ", ".join(f"{n} {k}" for k, n in gguf.tensor_types.items())
    out.print(
        f"wrote {out_dir}: {gguf.file} ({manifest.files[gguf.file].size / 1e6:.1f} MB, {gguf.tensor_count} "
        f"tensors: {types}), manifest.json lists {', '.join(manifest.files)}"
    )


def _print_trt(out_dir: Path, result: dict) -> None:
    manifest = Manifest.from_dict(result["manifest"], out_dir)
    out.print(f"wrote {out_dir}: {', '.join(manifest.files)}, manifest.json")
    if result["built_here"]:
        engine = manifest.engine_for(result["engine"])
        out.print(f"built {engine.file} with TensorRT {engine.tensorrt} on {engine.gpu_name}")
        return
    out.print(f"no engine built here: {result['not_built_because']}")
    out.print("TensorRT engines are built on the device that runs them. To finish:")
    for step in result["next_steps"]:
        out.print(f"  - {step}")
