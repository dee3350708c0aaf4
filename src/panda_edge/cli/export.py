"""`panda export`: a checkpoint's vision part to an ONNX bundle for one TensorRT target."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from panda_edge.cli._common import emit_json, err, handle_errors, json_to_stdout, out

TARGETS = ("onnx", "trt", "gguf", "all")


@handle_errors
def export(
    checkpoint: Annotated[str, typer.Option(help="Checkpoint directory, or 'tiny' for the embedded model.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Bundle directory to write (created if missing).")],
    target: Annotated[
        str, typer.Option(help="What to export: onnx (trt, gguf, all: not in this build).")
    ] = "onnx",
    trt_profile: Annotated[
        str, typer.Option(help="TensorRT the graph is for: 8.5 (JetPack 5), 10 (JetPack 6) or 11.")
    ] = "11",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the manifest as JSON ('-': stdout).")
    ] = None,
) -> None:
    """Export STAB + projector to BUNDLE/stab.onnx (static shapes, fp32) with manifest, tokenizer, prompt.

    The graph is checked for the TensorRT profile (opset, operators, static shapes); exit 1 and no
    graph written when a check fails, exit 2 for a bad checkpoint, profile or target.
    """
    from panda_edge.errors import PandaError
    from panda_edge.export.stab_onnx.pipeline import export_bundle
    from panda_edge.export.stab_onnx.profiles import get_profile

    if target not in TARGETS:
        raise PandaError(f"unknown target '{target}'; choose one of: {', '.join(TARGETS)}")
    if target != "onnx":
        raise PandaError(f"--target {target} is not available in this build yet; use --target onnx")
    get_profile(trt_profile)  # a bad profile fails before any loading
    quiet = json_to_stdout(json_out)
    manifest = export_bundle(
        checkpoint, out_dir, trt_profile, on_step=None if quiet else lambda m: err.print(m, highlight=False)
    )
    if json_out is not None:
        emit_json(manifest, json_out)
        if quiet:
            return
    vision = manifest["vision"]
    size = manifest["files"][vision["file"]]["size"]
    others = ", ".join(name for name in manifest["files"] if name != vision["file"])
    out.print(
        f"wrote {out_dir}: {vision['file']} ({size / 1e6:.1f} MB, opset {vision['opset']}, TensorRT "
        f"{vision['tensorrt']} profile, {vision['inputs']['frames']['shape']} -> "
        f"{vision['outputs']['visual_tokens']['shape']}), {others}, manifest.json"
    )
