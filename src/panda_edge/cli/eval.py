"""`panda eval`: exact-match accuracy of the PyTorch reference on a video QA set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from panda_edge.backends import CPU, DEFAULT_BACKEND, DEFAULT_KV_CACHE, TORCH
from panda_edge.cli._common import (
    CtxOpt,
    GgufOpt,
    GpuLayersOpt,
    KvTypeOpt,
    LoraOpt,
    PrecisionOpt,
    RayAddress,
    RayWorkers,
    ReferenceDevice,
    ReferenceDtype,
    Threads,
    VisionOpt,
    emit_json,
    handle_errors,
    json_to_stdout,
    note,
    old_spelling,
    out,
    progress_bar,
    reference_precision,
    runtime_options,
    show_progress,
)
from panda_edge.errors import PandaError


@handle_errors
def eval(
    qa: Annotated[
        Path,
        typer.Option(
            help="QA JSON: Video-ChatGPT style (e.g. heldout.json) or MSVD-QA style (video_id, question_id)."
        ),
    ],
    videos: Annotated[
        Path, typer.Option(help="Directory holding the videos (by name, or by id with any extension).")
    ],
    checkpoint: Annotated[str, typer.Option(help="Checkpoint directory, or 'tiny'.")] = "tiny",
    bundle: Annotated[
        Path | None,
        typer.Option(help="Also score the runtime on this bundle, and its agreement with the reference."),
    ] = None,
    vision: VisionOpt = DEFAULT_BACKEND,
    gguf_type: GgufOpt = None,
    lora: LoraOpt = None,
    precision: PrecisionOpt = None,
    vision_precision: Annotated[
        str | None,
        typer.Option("--vision-precision", hidden=True, help="Deprecated spelling of --precision."),
    ] = None,
    kv_type: KvTypeOpt = DEFAULT_KV_CACHE,
    n_ctx: CtxOpt = None,
    n_gpu_layers: GpuLayersOpt = 0,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N questions.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 16,
    dtype: ReferenceDtype = "fp32",
    device: ReferenceDevice = "cpu",
    threads: Threads = None,
    ray: RayAddress = None,
    workers: RayWorkers = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Journal of answers (JSON lines): what it holds is skipped, what finishes is added."
        ),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the result as JSON ('-': stdout).")
    ] = None,
) -> None:
    """Answer every question greedily and report normalized exact-match accuracy, overall and per type.

    A video is decoded once for all its questions; one that cannot be read is an error on its
    questions (counted wrong), not the end of the run. With --bundle the runtime answers too (ONNX
    Runtime vision, or with --vision torch the checkpoint's vision part on --device at --precision;
    `panda run`'s options): its accuracy and the share of questions where the two agree, per type.
    With --ray the videos are spread over a cluster's workers (restarted and retried by Ray when one
    dies).
    """
    from panda_edge.host import use_threads
    from panda_edge.model.videopanda import describe_reference
    from panda_edge.parity.qa_jobs import AnswererSpec, Journal, answer_questions, local_runner, qa_report
    from panda_edge.parity.task import read_questions

    questions = read_questions(qa, videos)[:limit]
    if not videos.is_dir():
        raise PandaError(f"--videos {videos}: no such directory")
    precision = old_spelling("--precision", precision, None, "--vision-precision", vision_precision)
    here = use_threads(threads)  # a Ray worker applies the rule on its own node
    torch_vision = vision == TORCH  # the runtime's vision is the reference's: its checkpoint, on --device
    runtime = runtime_options(
        vision=vision,
        precision=precision,
        gguf_type=gguf_type,
        threads=threads if ray is not None else here,
        n_gpu_layers=n_gpu_layers,
        n_ctx=n_ctx,
        kv_type=kv_type,
        checkpoint=checkpoint if torch_vision else None,
        lora=lora,
        device=device if torch_vision else CPU,
    )
    if lora is not None and bundle is None:
        raise PandaError("--lora applies to the runtime's decoder: give --bundle")
    if bundle is not None:
        runtime.check(bundle)  # a bad bundle, or no asked GGUF or graph: exit 2 before a model loads
    applied = {}
    if lora is not None:
        from panda_edge.bundle import sha256_file
        from panda_edge.runtime.lora_file import describe_lora

        applied = {"lora": describe_lora(lora, sha256_file(lora))}
    reference_dtype = reference_precision(dtype, device)
    spec = AnswererSpec(
        checkpoint,
        reference_dtype,
        None if bundle is None else str(bundle.resolve()),
        runtime,
        max_new_tokens=max_new_tokens,
    )
    runner = local_runner
    if ray is not None:
        from panda_edge.scaleout.ray_qa import ray_runner

        runner = ray_runner(ray, workers)
    with progress_bar("answering", total=len(questions), enabled=show_progress(json_out)) as advance:
        run = answer_questions(
            questions, videos, spec, None if resume is None else Journal(resume), runner, on_answers=advance
        )
    report = qa_report(questions, run, spec.names)
    summary = report.pop("reference")  # the reference's accuracy at the top, as before --bundle
    if json_out is not None:
        reference = describe_reference(checkpoint, reference_dtype)
        emit_json(
            {"checkpoint": checkpoint, **summary, "reference": reference, **applied, **report}, json_out
        )
        if json_to_stdout(json_out):
            return
    lora_title = f" (runtime with LoRA {applied['lora']})" if applied else ""
    table = Table(title=f"exact match on {qa.name}{lora_title}")
    table.add_column("type")
    table.add_column("questions", justify="right")
    table.add_column("reference", justify="right")
    if "runtime" in report:
        table.add_column("runtime", justify="right")
        table.add_column("agree", justify="right")
    for kind, accuracy in summary["per_type"].items():
        row = [kind, str(summary["per_type_questions"][kind]), f"{accuracy:.1%}"]
        if "runtime" in report:
            row += [
                f"{report['runtime']['per_type'][kind]:.1%}",
                f"{report['agreement']['per_type'][kind]:.1%}",
            ]
        table.add_row(*row)
    row = ["all", str(summary["questions"]), f"{summary['accuracy']:.1%}"]
    if "runtime" in report:
        row += [f"{report['runtime']['accuracy']:.1%}", f"{report['agreement']['overall']:.1%}"]
    table.add_row(*row, style="bold")
    out.print(table)
    if report["errors"]:
        note(f"{report['errors']} questions could not be answered (see 'predictions' in --json)")
    if run.resumed:
        note(f"{run.resumed} answers came from {resume}")
