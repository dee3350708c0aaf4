"""`panda train`: the three-stage recipe on a toy world (or any Video-ChatGPT style data)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from panda_edge.cli._common import check_choice, emit_json, err, handle_errors, json_to_stdout, out

TEACHERS = ("none", "toyworld")


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
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write stage losses and times as JSON.")
    ] = None,
) -> None:
    """Train a Video-Panda in stages: 1 (STAB + projector, LLM frozen), 2 (end to end), 3 (instructions).

    Saves the released checkpoint layout after every stage and resumes an interrupted run.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from panda_edge.config import preset as get_preset
    from panda_edge.errors import PandaError
    from panda_edge.train.recipe import STAGE_NAMES, TINY_RECIPE
    from panda_edge.train.trainer import STATE_FILE, load_state
    from panda_edge.train.trainer import Progress as TrainProgress
    from panda_edge.train.trainer import train as run_training

    check_choice("teacher", teacher, TEACHERS)
    config = get_preset(preset)
    teacher_module = None
    if teacher == "toyworld":
        from panda_edge.train.toy_teacher import ToyWorldTeacher

        teacher_module = ToyWorldTeacher(config.vision.patch)
    stages = TINY_RECIPE
    if stage is not None:
        check_choice("stage", stage, STAGE_NAMES)
        position = STAGE_NAMES.index(stage)
        state = load_state(out_dir / STATE_FILE)
        done = state["done"] if state else []
        missing = [s for s in STAGE_NAMES[:position] if s not in done]
        if missing:
            raise PandaError(f"stage {stage} needs stages {', '.join(missing)} first in {out_dir}")
        stages = TINY_RECIPE[: position + 1]
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, disable=json_to_stdout(json_out)) as bar:
        task = {"id": None}

        def on_stage(s, total: int) -> None:
            task["id"] = bar.add_task(f"stage {s.name}", total=total, loss="-")

        def on_step(step: int, loss: float) -> None:
            bar.update(task["id"], completed=step, loss=f"{loss:.3f}")

        result = run_training(
            data,
            out_dir,
            config=config,
            stages=stages,
            seed=seed,
            teacher=teacher_module,
            teacher_width=teacher_module.width if teacher_module is not None else None,
            progress=TrainProgress(on_stage=on_stage, on_step=on_step, on_message=lambda m: err.print(m)),
        )
    if json_out is not None:
        emit_json(result.to_dict(), json_out)
    out.print(f"trained in {result.seconds:.0f} s -> {out_dir}")
