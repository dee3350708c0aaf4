"""`panda train`: the three-stage recipe on a toy world (or any Video-ChatGPT style data)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from panda_edge.cli._common import emit_result, handle_errors, loss_bars, note, out


@handle_errors
def train(
    data: Annotated[
        Path, typer.Option(help="Data directory with train.json and videos/ (see panda toyworld).")
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Checkpoint directory (resumes if it holds a run).")],
    preset: Annotated[str, typer.Option(help="Model configuration to train.")] = "tiny",
    stage: Annotated[
        str | None, typer.Option(help="Run only this stage (1, 2, 3); earlier ones must be done.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for weights and data order.")] = 0,
    teacher: Annotated[
        str,
        typer.Option(
            help="Teacher for the distillation loss (eq. 19): 'none', or 'toyworld' (hand-written from the "
            "toy world's rules; the embedded tiny model is trained with it)."
        ),
    ] = "none",
    save_dtype: Annotated[
        str,
        typer.Option(
            help="Store the checkpoint's weights as fp32, fp16 or bf16 (training stays fp32; the embedded "
            "tiny model ships in fp16)."
        ),
    ] = "fp32",
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            help="PyTorch threads (default: all the cores this process may use, busy or not: the weights "
            "depend on the thread count, and the shipped tiny model was trained with 2).",
        ),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write stage losses and times as JSON ('-': stdout).")
    ] = None,
) -> None:
    """Train a Video-Panda in stages: 1 (STAB + projector, LLM frozen), 2 (end to end), 3 (instructions).

    Saves the released checkpoint layout after every stage and resumes an interrupted run.
    """
    from panda_edge.host import use_threads
    from panda_edge.train.trainer import Progress as TrainProgress
    from panda_edge.train.trainer import train_recipe

    threads = use_threads(threads, steady=True)
    with loss_bars(json_out) as (start, on_step):

        def on_stage(s, total: int) -> None:
            start(f"stage {s.name}", total)

        progress = TrainProgress(on_stage=on_stage, on_step=on_step, on_message=note)
        result = train_recipe(data, out_dir, preset, stage, seed, teacher, progress, save_dtype)
    if emit_result({**result.to_dict(), "threads": threads}, json_out):
        return
    out.print(f"trained in {result.seconds:.0f} s with {threads} threads -> {out_dir}")
