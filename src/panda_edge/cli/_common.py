"""Shared CLI plumbing: consoles, error mapping, JSON output.

stdout carries results only (one JSON document in `--json` mode); progress and diagnostics go to
stderr. Exit status: 0 ok, 1 a check the user asked for failed, 2 the user's input is wrong.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from panda_edge.errors import CheckFailed, PandaError

err = Console(stderr=True)
out = Console(highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(func: F) -> F:
    """Turn the library's error types into one clear line on stderr and an exit status."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (PandaError, CheckFailed) as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def print_model_text(piece: str) -> None:
    """Model text as it is, streamed to stdout: no Rich markup (an answer "[red]" would vanish),
    highlighting or emoji codes."""
    out.print(piece, end="", markup=False, highlight=False, emoji=False)
    out.file.flush()


def emit_json(data: Any, path: Path | None = None) -> None:
    """Write one JSON document to `path` (atomically), or to stdout when `path` is None or '-'.

    Strict JSON: a NaN or infinity is a bug in whatever made `data` (a report says None and why
    instead), so it raises naming the key rather than writing a document that parsers refuse.
    """
    try:
        text = json.dumps(data, indent=2, default=str, allow_nan=False) + "\n"
    except ValueError:
        raise ValueError(f"not finite, cannot be written as JSON: {_non_finite(data) or data!r}") from None
    if path is None or str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from panda_edge.fileio import atomic_path

    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text)


def _non_finite(data: Any, where: str = "") -> str | None:
    """The key path of the first NaN or infinity in `data` ('vision.ort.median_ms = nan'), if any."""
    if isinstance(data, float) and not math.isfinite(data):
        return f"{where or '(document)'} = {data}"
    items = (
        data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list | tuple) else ()
    )
    for key, value in items:
        found = _non_finite(value, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def number(value: float | None, spec: str, missing: str = "n/a") -> str:
    """`value` formatted by `spec`, or `missing` for a number a report could not measure (None)."""
    return missing if value is None else format(value, spec)


def check_choice(what: str, value: str, options: Sequence[str]) -> None:
    """Exit status 2 with the valid options for a value outside them (options Typer takes as text)."""
    if value not in options:
        raise PandaError(f"unknown {what} '{value}'; choose one of: {', '.join(options)}")


def parse_size(text: str) -> tuple[int, int]:
    """'640x360' -> (640, 360)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"'{text}' is not WIDTHxHEIGHT, e.g. 640x360") from None
    if w <= 0 or h <= 0:
        raise typer.BadParameter(f"'{text}': width and height must be positive")
    return w, h


@contextmanager
def progress_bar(
    description: str, total: int | None, enabled: bool = True
) -> Iterator[Callable[[int], None]]:
    """A stderr progress bar (total None: not known yet); yields `advance(completed)`. Off in JSON mode."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True, disable=not enabled) as bar:
        task = bar.add_task(description, total=total)
        yield lambda completed: bar.update(task, completed=completed)


def json_to_stdout(json_out: Path | None) -> bool:
    """`--json -`: stdout carries the JSON document alone, so progress and tables stay off."""
    return json_out is not None and str(json_out) == "-"


def step_printer(quiet: bool) -> Callable[[str], None] | None:
    """Progress lines on stderr, or none when stdout carries the JSON document alone."""
    return None if quiet else lambda message: err.print(message, highlight=False)


def emit_result(data: Any, json_out: Path | None) -> bool:
    """Write the `--json` document if asked; True when it went to stdout (print nothing else)."""
    if json_out is not None:
        emit_json(data, json_out)
    return json_to_stdout(json_out)


# --- the PyTorch reference's dtype and device (generate, eval, parity, demo, bench e2e) -------------

ReferenceDtype = Annotated[
    str,
    typer.Option(
        "--dtype",
        help="The reference's compute dtype: fp32 (default; 16-bit stored weights stay 16-bit and are "
        "widened layer by layer, exactly), bf16 or fp16.",
    ),
]
ReferenceDevice = Annotated[str, typer.Option("--device", help="Where the reference runs: cpu or cuda.")]


def reference_precision(dtype: str, device: str) -> Any:
    """The ReferencePrecision for --dtype/--device (exit 2 for an unknown value or no CUDA GPU)."""
    from panda_edge.model.loading import ReferencePrecision

    return ReferencePrecision(dtype, device)


def describe_reference(checkpoint: str, precision: Any) -> dict[str, str]:
    """What the report says of the reference: compute dtype, device, how its weights are stored."""
    from panda_edge.model.loading import stored_llm_dtype
    from panda_edge.model.videopanda import resolve_checkpoint

    return {
        "dtype": precision.dtype,
        "device": precision.device,
        "weights_stored": stored_llm_dtype(resolve_checkpoint(checkpoint)),
    }
