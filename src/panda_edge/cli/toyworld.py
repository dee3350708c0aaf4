"""`panda toyworld`: synthetic videos with question-answer pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from panda_edge.cli._common import emit_result, handle_errors, json_to_stdout, out, progress_bar
from panda_edge.errors import PandaError


@handle_errors
def toyworld(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Directory to write videos/, train.json, heldout.json.")
    ],
    videos: Annotated[int, typer.Option(min=1, help="Number of videos.")] = 400,
    seed: Annotated[int, typer.Option(min=0, help="Same seed, same bytes.")] = 0,
    heldout: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of videos held out.")] = 0.2,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Processes writing videos (default: one per available core).")
    ] = None,
    rule: Annotated[
        str | None,
        typer.Option(
            help="A changed rule one question type answers by, for fine-tuning to learn: 'reversed-motion' "
            "(motion questions answered with the opposite direction)."
        ),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the summary as JSON ('-': stdout).")
    ] = None,
) -> None:
    """Write a toy world: moving, appearing and disappearing shapes, with questions of six types."""
    from panda_edge.toyworld.rules import RULES
    from panda_edge.toyworld.writer import generate

    if rule is not None and rule not in RULES:
        raise PandaError(f"unknown --rule '{rule}'; choose one of: {', '.join(RULES)}")

    with progress_bar("writing videos", total=videos, enabled=not json_to_stdout(json_out)) as advance:
        summary = generate(
            out_dir,
            videos=videos,
            seed=seed,
            heldout_fraction=heldout,
            progress=advance,
            workers=workers,
            rule=rule,
        )
    if emit_result(summary.to_dict(), json_out):
        return
    types = ", ".join(f"{k} {v}" for k, v in summary.per_type.items())
    out.print(
        f"{summary.videos} videos in {out_dir}: {summary.train_questions} training and "
        f"{summary.heldout_questions} held-out questions ({types})"
    )
