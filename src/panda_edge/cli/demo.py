"""`panda demo`: answer held-out toy-world questions with the embedded tiny model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from panda_edge.cli._common import (
    emit_result,
    err,
    handle_errors,
    json_to_stdout,
    out,
    progress_bar,
)


@handle_errors
def demo(
    workdir: Annotated[
        Path | None, typer.Option(help="Where to write the toy world (default: ~/.cache/panda-edge/demo).")
    ] = None,
    questions: Annotated[int, typer.Option(min=1, help="How many held-out questions to answer.")] = 60,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the report as JSON ('-': stdout).")
    ] = None,
) -> None:
    """Run the main job on the embedded tiny model: toy videos in, answers and accuracy out."""
    from panda_edge.demo import run_demo

    quiet = json_to_stdout(json_out)
    with progress_bar("answering", total=questions, enabled=not quiet) as advance:
        report = run_demo(
            workdir, questions, on_step=lambda m: None if quiet else err.print(m), on_answer=advance
        )
    if emit_result(report.to_dict(), json_out):
        return
    samples = Table(title="held-out toy questions (PyTorch reference, tiny model)")
    for column in ("video", "question", "answer", "expected"):
        samples.add_column(column)
    for s in report.samples:
        mark = "[green]✓[/]" if s["correct"] else "[red]✗[/]"
        samples.add_row(s["video"], s["question"], f"{s['prediction']} {mark}", s["answer"])
    out.print(samples)
    per_type = ", ".join(f"{k} {v:.0%}" for k, v in report.per_type.items())
    out.print(f"accuracy: {report.accuracy:.1%} on {report.questions} questions ({per_type})")
    stab = report.parity.get("stab_fp32", {})
    verdict = "[green]pass[/]" if stab.get("passed") else "[red]FAIL[/]"
    out.print(
        f"stab_fp32 parity (ONNX Runtime vs PyTorch, {len(stab.get('videos', []))} videos): "
        f"cosine_min {stab.get('cosine_min')}, max_abs_rel {stab.get('max_abs_rel')} {verdict}"
    )
    out.print(f"timings (s): {report.timings_s}")
