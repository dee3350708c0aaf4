"""`panda export --target onnx`: checkpoint -> checked `stab.onnx` + tokenizer + prompt -> bundle."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from panda_edge.backends import DEFAULT_TRT_PROFILE, TrtTarget, trt_target
from panda_edge.bundle import (
    PROMPT_FILE,
    STAB_ONNX_FILE,
    TOKENIZER_FILE,
    Manifest,
    StagedFiles,
    file_record,
    previous_manifest,
    prompt_settings,
    tool_versions,
)
from panda_edge.errors import CheckFailed, CheckpointError
from panda_edge.export.stab_onnx.check import check_onnx
from panda_edge.export.stab_onnx.convert import export_graph
from panda_edge.fileio import write_json
from panda_edge.token_layout import FRAMES, VISUAL_TOKENS


def export_bundle(
    checkpoint: str | Path,
    out_dir: str | Path,
    profile: str | TrtTarget = DEFAULT_TRT_PROFILE,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Export the vision part of `checkpoint` ('tiny' or a directory) into the bundle `out_dir`.

    Raises CheckFailed (and writes no graph) when the static TensorRT checks find problems.
    Returns the manifest.
    """
    from panda_edge.config import read_config
    from panda_edge.model.checkpoint import weight_files
    from panda_edge.model.videopanda import resolve_checkpoint
    from panda_edge.model.vision import VisionTower

    step = on_step or (lambda message: None)
    target = profile if isinstance(profile, TrtTarget) else trt_target(profile)
    directory = resolve_checkpoint(checkpoint)
    read_config(directory)  # a wrong directory fails here, before anything is loaded
    tokenizer = directory / TOKENIZER_FILE
    if not tokenizer.is_file():
        raise CheckpointError(f"{directory}: no {TOKENIZER_FILE}; the bundle needs it for the prompt")
    step(f"loading the vision weights of {directory}")
    tower = VisionTower.from_checkpoint(directory)
    step("hashing the source weights")
    weights = {p.name: file_record(p) for p in weight_files(directory)}
    previous = previous_manifest(out_dir, weights)
    with StagedFiles(out_dir) as staged:  # the bundle as it was stays valid until the commit
        step(f"exporting STAB + projector to ONNX (TensorRT {target.tensorrt} profile, opset {target.opset})")
        tmp = staged.path(STAB_ONNX_FILE)
        graph = export_graph(tower.stab, tower.projector, tmp, target)
        step("checking the graph")
        problems = check_onnx(tmp, target)
        if problems:
            raise CheckFailed(
                f"the exported graph fails the TensorRT {target.tensorrt} checks: " + "; ".join(problems)
            )
        shutil.copyfile(tokenizer, staged.path(TOKENIZER_FILE))
        write_json(staged.path(PROMPT_FILE), prompt_settings(tower.config.vision.video_frames))
        step("hashing the bundle")
        return staged.commit(*_manifest(staged.bundle, previous, directory, weights, tower, graph, target))


def _manifest(
    bundle: Path, previous: Manifest, directory: Path, weights: dict[str, Any], tower, graph, target
) -> tuple[dict[str, Any], list[str]]:
    """The new manifest and the files it lists: this export's, and a GGUF already in the bundle."""
    kept, kept_files = previous.kept_for_vision_export()
    manifest = {
        "source": {"checkpoint": str(directory.resolve()), "weights": weights},
        "model": tower.config.to_dict(),
        "vision": {
            "file": STAB_ONNX_FILE,
            "inputs": {FRAMES: {"shape": list(graph.input_shape), "dtype": "float32"}},
            "outputs": {VISUAL_TOKENS: {"shape": list(graph.output_shape), "dtype": "float32"}},
            "layout": "full LSD grid per frame; the runtime keeps the crop rectangle's tokens",
            "profile": target.profile,
            "tensorrt": target.tensorrt,
            "opset": graph.opset,
            "precision": "fp32",
            "operators": graph.operators,
        },
        "prompt": PROMPT_FILE,
        "tokenizer": TOKENIZER_FILE,
        "tools": {**previous.tools, **tool_versions()},
        **kept,
    }
    files = [STAB_ONNX_FILE, TOKENIZER_FILE, PROMPT_FILE, *kept_files]
    return manifest, files
