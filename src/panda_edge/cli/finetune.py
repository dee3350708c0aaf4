"""`panda finetune`: LoRA (or the projector, or everything) on a user's own videos."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from panda_edge.cli._common import (
    RayAddress,
    ReferenceDevice,
    ReferenceDtype,
    emit_result,
    handle_errors,
    loss_bars,
    note,
    out,
)


@handle_errors
def finetune(
    checkpoint: Annotated[
        str, typer.Option(help="Checkpoint to start from (the released layout), or 'tiny'.")
    ],
    data: Annotated[
        Path,
        typer.Option(
            help="Data directory with train.json (Video-ChatGPT style) and videos/ (panda toyworld), or a "
            "QA JSON file in either form panda eval reads (Video-ChatGPT, or MSVD-QA style video_id/question/"
            "answer) with --videos."
        ),
    ],
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out", help="Output: the merged checkpoint (released layout) and, for LoRA, adapter/."
        ),
    ],
    videos: Annotated[
        Path | None,
        typer.Option(help="Directory of the videos a QA file names (default: videos/ beside it)."),
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            help="lora (the Llama's attention and MLP projections; base frozen in its 16 bits), "
            "projector (the vision -> LLM projector only) or full (the Llama and projector)."
        ),
    ] = "lora",
    rank: Annotated[int, typer.Option(min=1, help="LoRA rank.")] = 8,
    alpha: Annotated[float | None, typer.Option(help="LoRA alpha (default 2 x rank).")] = None,
    epochs: Annotated[float, typer.Option(min=0.01, help="Passes over the data (fractions allowed).")] = 1.0,
    lr: Annotated[
        float | None, typer.Option(help="Peak learning rate (default: lora 2e-4, projector 1e-4, full 2e-5).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Videos per optimizer step (global).")] = 4,
    dtype: ReferenceDtype = "fp32",
    device: ReferenceDevice = "cpu",
    seed: Annotated[int, typer.Option(help="Seed for the LoRA initialization and the data order.")] = 0,
    threads: Annotated[
        int | None,
        typer.Option("--threads", min=1, help="PyTorch threads (with --ray: per worker, default 1)."),
    ] = None,
    save_every: Annotated[
        int,
        typer.Option(
            min=1, help="Save the resumable state (with --ray: a Ray Train checkpoint) every N steps."
        ),
    ] = 50,
    ray: RayAddress = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="With --ray: data-parallel training workers.")
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Write the losses per step, time and outputs as JSON ('-': stdout)."),
    ] = None,
) -> None:
    """Fine-tune a checkpoint on your videos: LoRA on one machine, Ray Train data parallel beyond it.

    The vision part is frozen and each video's tokens are computed once. Memory is checked before
    loading (exit 2 with what is needed and what helps). The output directory is a checkpoint that
    panda export, parity and eval take as it is; adapter/ holds the LoRA alone (panda export --target
    gguf --lora). An interrupted run resumes from the output directory.
    """

    from panda_edge.host import use_threads
    from panda_edge.train.finetune import FinetuneSpec
    from panda_edge.train.finetune import Progress as FinetuneProgress

    spec = FinetuneSpec(
        checkpoint=checkpoint,
        data_dir=str(data.resolve()),
        method=method,
        rank=rank,
        alpha=alpha,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        dtype=dtype,
        device=device,
        seed=seed,
        videos_dir=None if videos is None else str(videos.resolve()),
    )
    if ray is None and workers is not None:
        raise typer.BadParameter("--workers goes with --ray")
    worker_threads = threads or 1
    threads = use_threads(threads, steady=True)
    with loss_bars(json_out) as (start, on_step):

        def on_start(total: int) -> None:
            start(f"{method} fine-tuning", total)

        progress = FinetuneProgress(on_start=on_start, on_step=on_step, on_message=note)
        if ray is not None:
            from panda_edge.scaleout.ray_finetune import ray_finetune

            result = ray_finetune(spec, out_dir.resolve(), ray, workers, progress, save_every, worker_threads)
        else:
            from panda_edge.train.finetune import finetune as run

            result = run(spec, out_dir, progress, save_every)
    if emit_result({**result.to_dict(), "threads": threads}, json_out):
        return
    losses = result.losses
    first = f"{losses[0]:.3f}" if losses else "-"
    last = f"{losses[-1]:.3f}" if losses else "-"
    out.print(
        f"{result.method}: {result.steps} steps in {result.seconds:.0f} s, loss {first} -> {last}, "
        f"{result.trainable_parameters:,} parameters trained -> {out_dir}"
        + (f" (adapter: {result.adapter})" if result.adapter else "")
    )
