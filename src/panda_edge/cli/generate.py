"""`panda generate`: the PyTorch reference answer to a question about a video, streamed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from panda_edge.cli._common import (
    ReferenceDevice,
    ReferenceDtype,
    Threads,
    emit_json,
    handle_errors,
    json_to_stdout,
    out,
    print_model_text,
    reference_precision,
    spinner,
)


@handle_errors
def generate(
    video: Annotated[Path, typer.Argument(help="Video file (mp4, mkv, webm, avi, mov, gif).")],
    question: Annotated[str, typer.Argument(help="The question about the video.")],
    checkpoint: Annotated[
        str, typer.Option(help="Checkpoint directory, or 'tiny' for the embedded default.")
    ] = "tiny",
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Stop after this many tokens.")] = 64,
    dtype: ReferenceDtype = "fp32",
    device: ReferenceDevice = "cpu",
    threads: Threads = None,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Also write the answer and timings as JSON here ('-': stdout)."),
    ] = None,
) -> None:
    """Answer QUESTION about VIDEO with the PyTorch reference model (greedy decoding)."""
    from panda_edge.host import use_threads
    from panda_edge.model.videopanda import VideoPanda, answer_video, describe_reference

    use_threads(threads)

    precision = reference_precision(dtype, device)
    with spinner("loading model"):
        model = VideoPanda.from_pretrained(checkpoint, precision)
    streaming = not json_to_stdout(json_out)
    answer = answer_video(model, video, question, max_new_tokens, print_model_text if streaming else None)
    if streaming:
        out.print()
    if json_out is not None:
        reference = describe_reference(checkpoint, precision)
        emit_json({"video": str(video), "question": question, **answer, "reference": reference}, json_out)
