"""`panda demo`: answer held-out toy-world questions with the embedded tiny model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from panda_edge.cli._common import (
    ReferenceDevice,
    ReferenceDtype,
    emit_result,
    handle_errors,
    json_to_stdout,
    note,
    out,
    progress_bar,
    reference_precision,
    step_printer,
)


@handle_errors
def demo(
    workdir: Annotated[
        Path | None, typer.Option(help="Where to write the toy world (default: ~/.cache/panda-edge/demo).")
    ] = None,
    questions: Annotated[
        int | None,
        typer.Option(min=1, help="How many held-out questions to answer (default: all 696; fewer: faster)."),
    ] = None,
    dtype: ReferenceDtype = "fp32",
    device: ReferenceDevice = "cpu",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the report as JSON ('-': stdout).")
    ] = None,
) -> None:
    """Run the main job on the embedded tiny model, end to end.

    Writes the held-out toy world, answers its questions with the PyTorch reference, exports STAB +
    projector to ONNX and the backbone to GGUF (f32, q8_0), answers the same questions with the
    runtime (ONNX Runtime + llama.cpp) and prints accuracy and parity (stab_fp32, e2e, task).
    """
    from panda_edge.demo import run_demo

    quiet = json_to_stdout(json_out)
    with progress_bar("answering", total=questions, enabled=not quiet) as advance:
        report = run_demo(
            workdir,
            questions,
            reference_precision(dtype, device),
            on_step=step_printer(quiet),
            on_answer=advance,
        )
    if emit_result(report.to_dict(), json_out):
        return
    samples = Table(title="held-out toy questions (PyTorch reference, tiny model)")
    for column in ("video", "question", "answer", "expected"):
        samples.add_column(column)
    for s in report.samples:
        mark = "[green]✓[/]" if s["correct"] else "[red]✗[/]"
        answer = Text(s["prediction"]).append_text(Text.from_markup(f" {mark}"))  # model text, no markup
        samples.add_row(Text(s["video"]), Text(s["question"]), answer, Text(s["answer"]))
    out.print(samples)
    out.print(accuracy_table(report))
    out.print(parity_table(report))
    for skipped in report.skipped:
        out.print(f"[yellow]skipped:[/] {skipped}")
    note("timings (s): " + ", ".join(f"{k} {v}" for k, v in report.timings_s.items()))


def accuracy_table(report) -> Table:
    table = Table(title=f"accuracy on {report.questions} held-out questions")
    for column in ("path", "accuracy", "vs reference", "per question", "per type (points vs reference)"):
        table.add_column(column)
    per_q = 1e3 / max(report.questions, 1)
    reference_ms = report.timings_s.get("reference_answers", 0) * per_q
    table.add_row(
        "PyTorch reference (fp32)",
        f"{report.accuracy:.1%}",
        "",
        f"{reference_ms:.0f} ms",
        ", ".join(f"{k} {v:.0%}" for k, v in report.per_type.items()),
    )
    for name, run in report.runtime.items():
        runtime_ms = run["seconds"] * per_q
        deltas = run["per_type_delta_points"]
        table.add_row(
            f"runtime: {name}",
            f"{run['accuracy']:.1%}",
            f"{(run['accuracy'] - report.accuracy) * 100:+.1f} points",
            f"{runtime_ms:.0f} ms",
            ", ".join(f"{k} {v:.0%} ({deltas.get(k, 0.0):+.1f})" for k, v in run["per_type"].items()),
        )
    return table


def parity_table(report) -> Table:
    table = Table(title="parity with the PyTorch reference (docs/design.md §5)")
    for column in ("level", "measured", "pass when", "verdict"):
        table.add_column(column)
    rows = []
    if stab := report.parity.get("stab_fp32"):
        rows.append(
            (
                f"stab_fp32 ({len(stab['videos'])} videos)",
                f"cosine_min {stab['cosine_min']:.7f}, max_abs_rel {stab['max_abs_rel']:.2e}",
                "cosine >= 0.99999, rel <= 1e-3",
                stab["passed"],
            )
        )
    if int8 := report.parity.get("stab_int8"):
        rows.append(
            (
                "stab_int8 (ONNX Runtime U8S8)",
                f"cosine_mean {int8['cosine_mean']:.5f}, cosine_min {int8['cosine_min']:.4f}",
                "cosine_mean >= 0.99",
                int8["passed"],
            )
        )
    if e2e := report.parity.get("e2e"):
        rows.append(
            (
                f"e2e ({e2e['vision']} + {e2e['gguf']})",
                f"{e2e['identical_answers']}/{e2e['videos']} answers identical",
                "all token-for-token",
                e2e["passed"],
            )
        )
    for key in ("task", "task_int8"):
        if task := report.parity.get(key):
            rows.append(
                (
                    f"{key} ({task['vision']} + {task['gguf']})",
                    f"{task['runtime_accuracy']:.1%} vs {task['torch_accuracy']:.1%} "
                    f"({task['delta_points']:+.2f} points)",
                    "within 1 point",
                    task["passed"],
                )
            )
    if agreement := (report.parity.get("task") or {}).get("gguf_agreement"):
        rows.append(
            (
                "q8_0 vs f32 GGUF answers",
                f"{agreement['same_answers']}/{agreement['questions']} the same "
                f"({agreement['agreement']:.1%})",
                ">= 98% the same",
                agreement["agreement"] >= 0.98,
            )
        )
    for level, measured, rule, passed in rows:
        table.add_row(level, measured, rule, "[green]pass[/]" if passed else "[red]FAIL[/]")
    return table
