"""`panda parity`: the bundle's engines against the PyTorch reference, every level the bundle allows
(`parity.report.run_parity`); this module parses and prints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from panda_edge.cli._common import (
    GpuLayersOpt,
    RayAddress,
    RayWorkers,
    ReferenceDevice,
    ReferenceDtype,
    Threads,
    emit_result,
    handle_errors,
    json_to_stdout,
    out,
    progress_bar,
    reference_precision,
    step_printer,
)
from panda_edge.parity.report import LEVELS


@handle_errors
def parity(
    checkpoint: Annotated[str, typer.Option(help="The reference: checkpoint directory, or 'tiny'.")],
    bundle: Annotated[Path, typer.Option(help="Bundle directory written by panda export.")],
    videos: Annotated[
        list[Path] | None, typer.Argument(help="Videos to compare (default: four generated clips).")
    ] = None,
    video_options: Annotated[
        list[Path] | None, typer.Option("--videos", help="More videos (repeatable; also: --videos A B C).")
    ] = None,
    qa: Annotated[
        Path | None,
        typer.Option(help="QA file for e2e/task (default for --checkpoint tiny: the held-out toy world)."),
    ] = None,
    video_dir: Annotated[
        Path | None, typer.Option(help="Where --qa's videos are (default: the 'videos' folder beside it).")
    ] = None,
    levels: Annotated[
        str | None,
        typer.Option(
            help=f"Comma-separated subset of: {', '.join(LEVELS)} (default: all the bundle allows)."
        ),
    ] = None,
    e2e_videos: Annotated[
        int, typer.Option(min=1, help="Videos for the e2e level (one question each).")
    ] = 20,
    questions: Annotated[
        int | None, typer.Option(min=1, help="At most this many questions for the task level (default: all).")
    ] = None,
    dtype: ReferenceDtype = "fp32",
    device: ReferenceDevice = "cpu",
    vision_device: Annotated[
        str,
        typer.Option(
            "--vision-device",
            help="Where e2e and task encode video: cpu (ONNX Runtime on the bundle's graphs) or cuda (the "
            "checkpoint's vision part through PyTorch on the GPU, as --vision torch --device cuda; task "
            "at each of its dtypes).",
        ),
    ] = "cpu",
    n_gpu_layers: GpuLayersOpt = 0,
    threads: Threads = None,
    ray: RayAddress = None,
    workers: RayWorkers = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the result as JSON ('-': stdout).")
    ] = None,
) -> None:
    """Check the bundle against the PyTorch reference at every level it holds.

    stab_fp32 (ONNX graph): per video and overall, cosine per token (min >= 0.99999) and max abs
    difference relative to the reference's max abs (<= 1e-3). stab_int8 (INT8 graphs): mean
    cosine per token >= 0.99 for the CPU graph as ONNX Runtime runs it and for the TensorRT graph
    (Q/DQ computed in float), with the minimum and a histogram. llm (GGUF files): llama.cpp logits vs
    transformers fp32 on the same tokens, per GGUF type; f32 must agree on top-1 everywhere.
    tokenizer: llama.cpp ids identical to SentencePiece's on every prompt chunk. e2e: the runtime
    (ONNX Runtime fp32 + f32 GGUF) answers token for token as the reference, one question per video.
    task: exact-match accuracy of the runtime (fp32 vision, and INT8 when the bundle has it, with the
    q8_0 GGUF or the one the bundle has) within 1 point of the reference. With --vision-device cuda
    both levels encode video with PyTorch on the GPU (task: at fp32, fp16 and bf16), and
    --n-gpu-layers puts the decoder there too. Exit 1 when a level fails, 2 for bad input.
    """
    from panda_edge.errors import CheckFailed
    from panda_edge.host import use_threads
    from panda_edge.parity.report import ParityOptions, run_parity

    quiet = json_to_stdout(json_out)
    runner = None
    if ray is not None:
        from panda_edge.scaleout.ray_qa import ray_runner

        runner = ray_runner(ray, workers)
    here = use_threads(threads)  # the reference's PyTorch threads here
    options = ParityOptions(
        videos=[*(video_options or []), *(videos or [])],
        qa=qa,
        video_dir=video_dir,
        levels=levels.split(",") if levels is not None else None,
        e2e_videos=e2e_videos,
        max_questions=questions,
        runner=runner,
        threads=threads if ray is not None else here,  # a Ray worker applies the rule on its own node
        vision_device=vision_device,
        n_gpu_layers=n_gpu_layers,
    )
    run = run_parity(
        checkpoint,
        bundle,
        options,
        reference_precision(dtype, device),
        progress=lambda description, total: progress_bar(description, total, enabled=not quiet),
        on_step=step_printer(quiet),
        on_level=None if quiet else _print_level,
    )
    emit_result(run.report, json_out)
    if not run.passed:
        raise CheckFailed("; ".join(run.failures))


def _print_level(name: str, result: Any) -> None:
    """A level's lines on stdout as it is done: per video then overall for the stab levels (for
    stab_int8 each graph's lines under its name), one line per GGUF type for llm, else one line."""
    if name == "llm":
        for r in result.values():
            out.print(str(r))
    elif name.startswith("stab_"):
        parts = (
            {name: result}
            if hasattr(result, "overall")
            else {f"{name} (CPU graph)": result.cpu, f"{name} (TensorRT graph)": result.tensorrt}
        )
        for title, part in parts.items():
            out.print(f"[bold]{title}[/]")
            for video in part.videos:
                out.print(str(video))
            out.print(str(part.overall))
    else:
        out.print(str(result))
