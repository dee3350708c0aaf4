"""`panda eval`: exact-match accuracy of the PyTorch reference on a video QA set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from panda_edge.cli._common import (
    ReferenceDevice,
    ReferenceDtype,
    emit_json,
    handle_errors,
    json_to_stdout,
    out,
    progress_bar,
    reference_precision,
    spinner,
)


@handle_errors
def eval(
    qa: Annotated[Path, typer.Option(help="QA JSON (Video-ChatGPT style, e.g. heldout.json).")],
    videos: Annotated[Path, typer.Option(help="Directory holding the videos the QA file names.")],
    checkpoint: Annotated[str, typer.Option(help="Checkpoint directory, or 'tiny'.")] = "tiny",
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N questions.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 16,
    dtype: ReferenceDtype = "fp32",
    device: ReferenceDevice = "cpu",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the result as JSON ('-': stdout).")
    ] = None,
) -> None:
    """Answer every question greedily and report normalized exact-match accuracy, overall and per type."""
    from panda_edge.model.videopanda import VideoPanda, describe_reference, reference_answerer
    from panda_edge.parity.task import evaluate, read_questions

    questions = read_questions(qa)[:limit]
    precision = reference_precision(dtype, device)
    with spinner("loading model"):
        model = VideoPanda.from_pretrained(checkpoint, precision)
    quiet = json_to_stdout(json_out)
    with progress_bar("answering", total=len(questions), enabled=not quiet) as advance:
        result = evaluate(reference_answerer(model, max_new_tokens), questions, videos, on_answer=advance)
    if json_out is not None:
        reference = describe_reference(checkpoint, precision)
        emit_json({"checkpoint": checkpoint, "reference": reference, **result.to_dict()}, json_out)
        if quiet:
            return
    table = Table(title=f"exact match on {qa.name}")
    table.add_column("type")
    table.add_column("questions", justify="right")
    table.add_column("accuracy", justify="right")
    summary = result.to_dict()
    for kind, accuracy in summary["per_type"].items():
        table.add_row(kind, str(summary["per_type_questions"][kind]), f"{accuracy:.1%}")
    table.add_row("all", str(result.questions), f"{result.accuracy:.1%}", style="bold")
    out.print(table)
