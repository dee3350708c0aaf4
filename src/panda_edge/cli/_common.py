"""Shared CLI plumbing: consoles, logging, error mapping, JSON output.

stdout carries results only (one JSON document with `--json -`); progress, logs and diagnostics go
to stderr, and `panda -q` leaves only errors there. Exit status: 0 ok, 1 a check the user asked for
failed, 2 the user's input is wrong.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from panda_edge.backends import (
    CPU,
    DEFAULT_BACKEND,
    DEFAULT_KV_CACHE,
    GGUF_PREFERENCE,
    KV_CACHE_TYPES,
    ORT,
    TORCH,
    TRT,
    VISION_BACKENDS,
    listed,
    precision_help,
)
from panda_edge.errors import CheckFailed, PandaError

err = Console(stderr=True)
out = Console(highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])

_LOG_STYLES = {logging.WARNING: "yellow", logging.ERROR: "bold red", logging.CRITICAL: "bold red"}
_quiet = False  # panda -q: no progress, no notes; results on stdout, errors on stderr


class _StderrHandler(logging.Handler):
    """panda_edge's log records on the stderr console: `warning: ...` in yellow, as the CLI printed its
    warnings before there was a log; below WARNING with the logger's name (`panda -v`)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            where = f" {record.name}" if record.levelno < logging.WARNING else ""
            style = _LOG_STYLES.get(record.levelno, "dim")
            line = f"{record.levelname.lower()}{where}: {message}"
            err.print(line, style=style, markup=False, highlight=False, soft_wrap=True)
        except Exception:
            self.handleError(record)


def configure_output(verbose: bool = False, quiet: bool = False) -> Callable[[], None]:
    """Set up the `panda_edge` log for one command: DEBUG with `-v` (llama.cpp, ONNX Runtime and
    TensorRT logs let through too, see `optional.native_log_level`), errors only with `-q` (and no
    progress), warnings by default. Returns what puts things back as they were."""
    global _quiet
    if verbose and quiet:
        raise typer.BadParameter("-v/--verbose and -q/--quiet do not go together")
    logger = logging.getLogger("panda_edge")
    handler, level = _StderrHandler(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING)
    _quiet = quiet

    def restore() -> None:
        global _quiet
        logger.removeHandler(handler)
        logger.setLevel(level)
        _quiet = False

    return restore


def note(message: str) -> None:
    """A line for the person at the terminal (what is happening, timings) on stderr; none with -q."""
    if not _quiet:
        err.print(message, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    """A warning on stderr through the log (`warning: ...`, yellow); none with -q."""
    logging.getLogger("panda_edge.cli").warning("%s", message)


def spinner(message: str) -> AbstractContextManager[Any]:
    """A stderr spinner while something loads; none with -q."""
    return nullcontext() if _quiet else err.status(message)


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
    """A stderr progress bar (total None: not known yet); yields `advance(completed)`. Off when not
    `enabled` (`--json -`) and with -q."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            return Text("" if task.speed is None else f"{task.speed:.2f}/s")

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        Rate(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True, disable=_quiet or not enabled) as bar:
        task = bar.add_task(description, total=total)
        yield lambda completed: bar.update(task, completed=completed)


@contextmanager
def loss_bars(
    json_out: Path | None,
) -> Iterator[tuple[Callable[[str, int], None], Callable[[int, float], None]]]:
    """Training progress on stderr, one bar per phase (a stage, a fine-tune) with its latest loss;
    yields `start(description, total)` and `step(completed, loss)`. Off as `show_progress` says."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, disable=not show_progress(json_out)) as bar:
        task: dict[str, Any] = {"id": None}

        def start(description: str, total: int) -> None:
            task["id"] = bar.add_task(description, total=total, loss="-")

        def step(completed: int, loss: float) -> None:
            bar.update(task["id"], completed=completed, loss=f"{loss:.3f}")

        yield start, step


def show_progress(json_out: Path | None) -> bool:
    """Whether progress may be drawn: not with -q, not while stdout carries the JSON document."""
    return not (_quiet or json_to_stdout(json_out))


def json_to_stdout(json_out: Path | None) -> bool:
    """`--json -`: stdout carries the JSON document alone, so progress and tables stay off."""
    return json_out is not None and str(json_out) == "-"


def step_printer(quiet: bool) -> Callable[[str], None] | None:
    """Progress lines on stderr, or none when stdout carries the JSON document alone or with -q."""
    return None if quiet or _quiet else note


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
ReferenceDevice = Annotated[
    str,
    typer.Option(
        "--device", help="Where the reference runs (and, in eval, a --vision torch runtime): cpu or cuda."
    ),
]


def reference_precision(dtype: str, device: str) -> Any:
    """The ReferencePrecision for --dtype/--device (exit 2 for an unknown value or no CUDA GPU)."""
    from panda_edge.model.loading import ReferencePrecision

    return ReferencePrecision(dtype, device)


# --- CPU threads (demo, generate, eval, parity, bench, run, chat, serve) ------------------------------------

Threads = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="CPU threads for PyTorch, ONNX Runtime and llama.cpp (default: the cores this process may "
        "use that other processes leave idle; see panda_edge.host.default_threads).",
    ),
]


# --- Ray (eval, parity, serve) -------------------------------------------------------------------

RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray",
        help="Run on a Ray cluster: 'local' (start one here), 'auto' (the running one) or its address. "
        "Needs panda-edge[ray]; see docs/scale-out.md.",
    ),
]
RayWorkers = Annotated[
    int | None,
    typer.Option(
        "--workers", min=1, help="With --ray: answering workers (default: one per CPU, or per GPU)."
    ),
]


# --- the runtime (run, chat, serve, eval --bundle): one declaration each, one RuntimeOptions ---------

BundleOpt = Annotated[Path, typer.Option("--bundle", help="Bundle directory written by panda export.")]
VisionOpt = Annotated[
    str,
    typer.Option(
        "--vision",
        help="Vision backend: "
        + listed(f"{name} ({what})" for name, what in VISION_BACKENDS.items())
        + " (torch: give --checkpoint).",
    ),
]
PrecisionOpt = Annotated[
    str | None,
    typer.Option(
        "--precision",
        help=f"Vision graph: {precision_help(ORT)} (int8: the calibrated graph); with --vision trt, the "
        f"engine's: {precision_help(TRT)}, one the bundle has (panda build-engine); with --vision torch, "
        f"the compute dtype: {precision_help(TORCH)}.",
    ),
]
GgufOpt = Annotated[
    str | None,
    typer.Option(
        "--gguf-type",
        help=f"Decoder GGUF in the bundle (default: the first it has of {listed(GGUF_PREFERENCE)}).",
    ),
]
GpuLayersOpt = Annotated[
    int, typer.Option("--n-gpu-layers", min=0, help="Decoder layers on the GPU (llama.cpp built with CUDA).")
]
CtxOpt = Annotated[
    int | None, typer.Option("--n-ctx", min=64, help="Context length (default: the model's, at most 4096).")
]
KvTypeOpt = Annotated[
    str,
    typer.Option(
        "--kv-type",
        help=f"KV cache type: {listed(KV_CACHE_TYPES)} (default {DEFAULT_KV_CACHE}; quantized: with "
        "flash attention).",
    ),
]
KvCacheAlias = Annotated[
    str | None, typer.Option("--kv-cache", hidden=True, help="Deprecated spelling of --kv-type.")
]
CacheOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache", help="Keep each video's prefix (visual tokens in the KV cache) here for next time."
    ),
]
CacheMaxOpt = Annotated[
    float,
    typer.Option(
        "--cache-max-gb",
        min=0.0,
        help="Bound on --cache (GB); least recently used prefixes go first (a 7B prefix is 0.5-1.2 GB).",
    ),
]
LoraOpt = Annotated[
    Path | None,
    typer.Option(
        "--lora",
        help=(
            "A llama.cpp LoRA GGUF (panda export --target gguf --lora) applied to the decoder at load; it "
            "must be trained on the bundle's checkpoint. With it llama-cpp-python does not mmap the GGUF: "
            "the whole file is read into memory, no page sharing between processes."
        ),
    ),
]
CheckpointOpt = Annotated[
    str | None, typer.Option("--checkpoint", help="--vision torch only: the reference checkpoint, or 'tiny'.")
]
VisionDeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        help="--vision torch only: where PyTorch runs the vision part, cpu or cuda (a GPU without "
        "TensorRT; --precision fp16 or bf16 there).",
    ),
]


def old_spelling(flag: str, value: Any, default: Any, old_flag: str, old_value: Any) -> Any:
    """The value of an option that also has a hidden old spelling: the old one's, with a warning, when
    it is given (and the new one is not, or agrees)."""
    if old_value is None:
        return value
    if value not in (default, old_value):
        raise PandaError(f"{old_flag} is the old spelling of {flag}: give one ({value} or {old_value})")
    warn(f"{old_flag} is deprecated: use {flag}")
    return old_value


def runtime_options(
    vision: str = DEFAULT_BACKEND,
    precision: str | None = None,
    gguf_type: str | None = None,
    threads: int | None = None,
    n_gpu_layers: int = 0,
    n_ctx: int | None = None,
    kv_type: str = DEFAULT_KV_CACHE,
    kv_cache: str | None = None,
    cache: Path | None = None,
    cache_max_gb: float | None = None,
    checkpoint: str | None = None,
    lora: Path | None = None,
    device: str = CPU,
) -> Any:
    """The RuntimeOptions the options above ask for (exit 2 for a combination that cannot run). Paths
    become absolute: a server's Ray replicas open them from another working directory."""
    from panda_edge.runtime.options import RuntimeOptions

    kv_type = old_spelling("--kv-type", kv_type, DEFAULT_KV_CACHE, "--kv-cache", kv_cache)
    if checkpoint is not None and Path(checkpoint).exists():
        checkpoint = str(Path(checkpoint).resolve())
    return RuntimeOptions(
        vision=vision,
        precision=precision,
        gguf_type=gguf_type,
        threads=threads,
        n_gpu_layers=n_gpu_layers,
        n_ctx=n_ctx,
        kv_type=kv_type,
        prefix_cache=None if cache is None else str(cache.resolve()),
        cache_max_bytes=None if cache_max_gb is None else int(cache_max_gb * 1e9),
        checkpoint=checkpoint,
        lora=None if lora is None else str(lora.resolve()),
        device=device,
    )
