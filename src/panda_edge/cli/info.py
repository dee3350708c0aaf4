"""`panda info`: configuration, parameter counts per part and visual-token counts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from panda_edge.cli._common import emit_result, handle_errors, out, parse_size


@handle_errors
def info(
    checkpoint: Annotated[
        str | None, typer.Argument(help="Checkpoint directory, or 'tiny' for the embedded default.")
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="A built-in configuration instead: full or tiny.")
    ] = None,
    size: Annotated[
        str | None, typer.Option(help="Video WIDTHxHEIGHT for the token counts (default: square).")
    ] = None,
    frames: Annotated[
        int | None, typer.Option(min=1, help="Decoded frames of the video (fewer than 8 are padded).")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the report as JSON ('-': stdout).")
    ] = None,
) -> None:
    """Show a model's configuration, parameters per part and visual tokens, without loading weights."""
    from panda_edge.model.summary import describe

    if (checkpoint is None) == (preset is None):
        raise typer.BadParameter("give a checkpoint directory or --preset NAME (one of them)")
    width_height = parse_size(size) if size else None
    report = describe(checkpoint=checkpoint, preset_name=preset, size=width_height, real_frames=frames)
    if emit_result(report, json_out):
        return
    params = Table(title=f"Video-Panda ({report['source']})", show_header=True)
    params.add_column("part")
    params.add_column("parameters", justify="right")
    for name, count in report["parameters"].items():
        params.add_row(name, f"{count / 1e6:,.2f}M")
    out.print(params)
    tokens = report["visual_tokens"]
    out.print(
        f"visual tokens for {tokens['width']}x{tokens['height']}: {tokens['per_frame']} per frame, "
        f"{tokens['per_video']} per video of {tokens['frames']} frames ({tokens['real_frames']} real)"
    )
