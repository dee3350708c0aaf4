"""`panda parity`: the bundle's ONNX Runtime tokens against the PyTorch reference (level stab_fp32)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from panda_edge.cli._common import emit_json, err, handle_errors, json_to_stdout, out, progress_bar


@handle_errors
def parity(
    checkpoint: Annotated[str, typer.Option(help="The reference: checkpoint directory, or 'tiny'.")],
    bundle: Annotated[Path, typer.Option(help="Bundle directory written by panda export.")],
    videos: Annotated[
        list[Path] | None, typer.Argument(help="Videos to compare (default: four generated clips).")
    ] = None,
    video_options: Annotated[
        list[Path] | None, typer.Option("--videos", help="More videos (repeatable; also: --videos A B C).")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the result as JSON ('-': stdout).")
    ] = None,
) -> None:
    """Check the bundle's ONNX Runtime visual tokens against the PyTorch reference (stab_fp32).

    Per video and overall: cosine per token (min >= 0.99999) and max abs difference relative to the
    reference's max abs (<= 1e-3). Exit 1 when parity fails, 2 for bad input.
    """
    import tempfile

    from panda_edge.errors import CheckFailed, PandaError
    from panda_edge.model.vision import VisionTower
    from panda_edge.parity.clips import write_parity_clips
    from panda_edge.parity.stab import stab_parity
    from panda_edge.runtime.vision import OrtVisionEngine, TorchVisionReference

    chosen = [*(video_options or []), *(videos or [])]
    missing = [str(v) for v in chosen if not v.is_file()]
    if missing:
        raise PandaError(f"no such video file: {', '.join(missing)}")
    quiet = json_to_stdout(json_out)
    engine = OrtVisionEngine.from_bundle(bundle)
    if not quiet:
        err.print(f"loading the reference from {checkpoint}", highlight=False)
    tower = VisionTower.from_checkpoint(checkpoint)
    with tempfile.TemporaryDirectory(prefix="panda-parity-") as tmp:
        if not chosen:
            chosen = write_parity_clips(tmp, tower.config.vision.image_size)
        with TorchVisionReference(tower) as reference, engine:
            if engine.layout != reference.layout:
                raise PandaError(
                    f"{bundle} was exported for another model geometry ({engine.layout}) than "
                    f"the checkpoint's ({reference.layout})"
                )
            with progress_bar("comparing", total=len(chosen), enabled=not quiet) as advance:
                result = stab_parity(reference, engine, chosen, tower.config.vision, on_video=advance)
    if json_out is not None:
        emit_json(result.to_dict(), json_out)
    if not quiet:
        for video in result.videos:
            out.print(str(video))
        out.print(str(result.overall))
    if not result:
        raise CheckFailed(f"stab_fp32 parity failed: {result.overall}")
