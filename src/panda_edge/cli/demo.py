"""`panda demo`: answer held-out toy-world questions with the embedded tiny model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from panda_edge.cli._common import (
    ReferenceDevice,
    ReferenceDtype,
    Threads,
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
    threads: Threads = None,
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
    from panda_edge.host import use_threads

    threads = use_threads(threads)
    quiet = json_to_stdout(json_out)
    with progress_bar("answering", total=questions, enabled=not quiet) as advance:
        report = run_demo(
            workdir,
            questions,
            reference_precision(dtype, device),
            on_step=step_printer(quiet),
            on_answer=advance,
            threads=threads,
        )
    if emit_result(report.to_dict(), json_out):
        return
    for table in demo_tables(report.to_dict()):
        out.print(table)
    for skipped in report.skipped:
        out.print(f"[yellow]skipped:[/] {skipped}")
    note("timings (s): " + ", ".join(f"{k} {v}" for k, v in report.timings_s.items()))


ACCURACY_COLUMNS = ("path", "accuracy", "vs reference", "per question")
PARITY_COLUMNS = ("level", "on", "measured", "pass when", "verdict")


def _table(title: str, *columns: str) -> Table:
    """Tables sized for an 80-column terminal: no outer edge, one space of padding inside; a cell too
    long for its column is cut with an ellipsis rather than folded onto a second line."""
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for column in columns:
        table.add_column(column, no_wrap=True, overflow="ellipsis")
    return table


def demo_tables(report: dict[str, Any]) -> list[Table]:
    """The demo's tables from its JSON report (`DemoReport.to_dict()`): samples, accuracy, accuracy
    per question type, parity."""
    tables = [samples_table(report), accuracy_table(report)]
    if report["reference"]["per_type"]:
        tables.append(per_type_table(report))
    return [*tables, parity_table(report)]


def samples_table(report: dict[str, Any]) -> Table:
    """Question, answer (✓ or ✗), expected answer; the videos are in the JSON (80 columns hold the
    longest toy question beside the longest answer twice, not a file name too)."""
    table = _table("held-out toy questions (PyTorch reference, tiny model)", "question", "answer", "expected")
    for s in report["samples"]:
        mark = Text(" ✓", style="green") if s["correct"] else Text(" ✗", style="red")
        table.add_row(
            Text(s["question"]), Text(s["prediction"]) + mark, Text(s["answer"])
        )  # model text, no markup
    return table


def accuracy_table(report: dict[str, Any]) -> Table:
    reference = report["reference"]
    table = _table(f"accuracy on {reference['questions']} held-out questions", *ACCURACY_COLUMNS)
    per_q = 1e3 / max(reference["questions"], 1)
    reference_ms = report["timings_s"].get("reference_answers", 0) * per_q
    table.add_row("PyTorch reference", f"{reference['accuracy']:.1%}", "", f"{reference_ms:.0f} ms")
    for name, run in report["runtime"].items():
        delta = (run["accuracy"] - reference["accuracy"]) * 100
        table.add_row(
            name, f"{run['accuracy']:.1%}", f"{delta:+.1f} points", f"{run['seconds'] * per_q:.0f} ms"
        )
    return table


def per_type_table(report: dict[str, Any]) -> Table:
    """One row per question type: the reference's accuracy, then each runtime's with its points
    against the reference."""
    runs = report["runtime"]
    table = _table("accuracy per question type (points vs reference)", "type", "reference", *runs)
    for kind, accuracy in report["reference"]["per_type"].items():
        cells = [f"{accuracy:.0%}"]
        for run in runs.values():
            delta = run["per_type_delta_points"].get(kind, 0.0)
            cells.append(f"{run['per_type'][kind]:.0%} ({delta:+.1f})" if kind in run["per_type"] else "")
        table.add_row(kind, *cells)
    return table


def parity_table(report: dict[str, Any]) -> Table:
    """One row per measured number: level, what it ran on, the number, the rule, the verdict (on a
    level's first row)."""
    parity = report["parity"]
    table = _table("parity with the PyTorch reference (docs/design.md §5)", *PARITY_COLUMNS)
    rows: list[tuple[str, str, str, str, bool | None]] = []
    if stab := parity.get("stab_fp32"):
        rows += [
            (
                "stab_fp32",
                f"{len(stab['videos'])} videos",
                f"cosine_min {stab['cosine_min']:.7f}",
                ">= 0.99999",
                stab["passed"],
            ),
            ("", "", f"max_abs_rel {stab['max_abs_rel']:.2e}", "<= 1e-3", None),
        ]
    if int8 := parity.get("stab_int8"):
        rows += [
            ("stab_int8", "ORT U8S8", f"cosine_mean {int8['cosine_mean']:.5f}", ">= 0.99", int8["passed"]),
            ("", "", f"cosine_min {int8['cosine_min']:.4f}", "reported", None),
        ]
    if e2e := parity.get("e2e"):
        setup = f"{e2e['vision']} + {e2e['gguf']}"
        rows.append(
            ("e2e", setup, f"{e2e['identical_answers']}/{e2e['videos']} identical", "all", e2e["passed"])
        )
    for key in ("task", "task_int8"):
        if task := parity.get(key):
            setup = f"{task['vision']} + {task['gguf']}"
            rows.append((key, setup, f"{task['delta_points']:+.2f} points", "within 1", task["passed"]))
    if agreement := (parity.get("task") or {}).get("gguf_agreement"):
        same = f"{agreement['same_answers']}/{agreement['questions']} same"
        rows.append(
            (
                f"{parity['task']['gguf']} answers",
                f"vs {agreement['baseline']} GGUF",
                same,
                ">= 98%",
                agreement["agreement"] >= 0.98,
            )
        )
    for level, setup, measured, rule, passed in rows:
        verdict = "" if passed is None else "[green]pass[/]" if passed else "[red]FAIL[/]"
        table.add_row(level, setup, measured, rule, verdict)
    return table
