"""`panda generate`: the PyTorch reference answer to a question about a video, streamed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from panda_edge.cli._common import (
    ReferenceDevice,
    ReferenceDtype,
    describe_reference,
    emit_json,
    err,
    handle_errors,
    out,
    print_model_text,
    reference_precision,
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
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Also write the answer and timings as JSON here ('-': stdout)."),
    ] = None,
) -> None:
    """Answer QUESTION about VIDEO with the PyTorch reference model (greedy decoding)."""
    import time

    from panda_edge.model.videopanda import VideoPanda
    from panda_edge.prompt import TextStream
    from panda_edge.video import load_video

    precision = reference_precision(dtype, device)
    with err.status("loading model"):
        model = VideoPanda.from_pretrained(checkpoint, precision)
    frames = load_video(video, model.config.vision)
    start = time.perf_counter()
    streaming = json_out is None or str(json_out) != "-"
    text = TextStream(model.tokenizer, print_model_text if streaming else None)
    for token in model.stream_generate(frames, question, max_new_tokens):
        text.push(token)
    answer, tokens = text.answer(), text.tokens
    seconds = time.perf_counter() - start
    if streaming:
        out.print()
    if json_out is not None:
        emit_json(
            {
                "video": str(video),
                "question": question,
                "answer": answer,
                "tokens": tokens,
                "seconds": seconds,
                "reference": describe_reference(checkpoint, precision),
            },
            json_out,
        )
