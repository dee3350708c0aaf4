"""`panda parity`: the bundle's engines against the PyTorch reference, every level the bundle allows.

stab_fp32 when the bundle holds the ONNX graph; stab_int8 when it holds the INT8 graphs (after
panda calibrate); llm and tokenizer when it holds GGUF files; e2e (f32 GGUF) and task when it holds
both and there are questions (--qa, or the held-out toy world for the embedded tiny model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from panda_edge.cli._common import (
    ReferenceDevice,
    ReferenceDtype,
    describe_reference,
    emit_json,
    err,
    handle_errors,
    json_to_stdout,
    out,
    progress_bar,
    reference_precision,
)


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
    q8_0 GGUF or the one the bundle has) within 1 point of the reference. Exit 1 when a level fails,
    2 for bad input.
    """
    from panda_edge.bundle import load_manifest
    from panda_edge.errors import CheckFailed, PandaError

    chosen = [*(video_options or []), *(videos or [])]
    missing = [str(v) for v in chosen if not v.is_file()]
    if missing:
        raise PandaError(f"no such video file: {', '.join(missing)}")
    quiet = json_to_stdout(json_out)
    manifest = load_manifest(bundle)
    ggufs = (manifest.get("llm") or {}).get("gguf") or {}
    if "vision" not in manifest and not ggufs:
        raise PandaError(
            f"{bundle}: the bundle holds neither the vision graph nor a GGUF; nothing to compare"
        )
    wanted = _levels(levels)
    precision = reference_precision(dtype, device)
    result: dict[str, Any] = {
        "source": _check_source(checkpoint, manifest),
        "reference": describe_reference(checkpoint, precision),
    }
    if not quiet:
        ref = result["reference"]
        weights = ref["weights_stored"]
        err.print(
            f"reference: {ref['dtype']} on {ref['device']}, weights stored as {weights}", highlight=False
        )
    # Without an f32 GGUF, the f16 one stands in over float16-stored weights: it holds them exactly
    # (a 7B f32 GGUF is 27 GB); judged by its error's size (parity/llm.py F16_STANDIN_MAX_REL).
    standin = "f32" not in ggufs and "f16" in ggufs and result["reference"]["weights_stored"] == "float16"
    failed: list[str] = []
    if "vision" in manifest and wanted & {"stab_fp32", "stab_int8"}:
        for level, stab in _stab_levels(checkpoint, bundle, chosen, precision, quiet).items():
            if level not in wanted:
                continue
            result.update(stab.to_dict())
            if not quiet:
                _print_stab(level, stab)
            if not stab:
                failed.append(f"{level} parity failed: {_overall(stab)}")
    if ggufs and "tokenizer" in wanted:
        tokenizer = _tokenizer_level(checkpoint, bundle, manifest)
        result["tokenizer"] = tokenizer.to_dict()
        if not quiet:
            out.print(str(tokenizer))
        if not tokenizer.passed:
            failed.append(str(tokenizer))
    if ggufs and "llm" in wanted:
        llm = _llm_level(checkpoint, bundle, manifest, precision, standin, quiet)
        result["llm"] = {t: r.to_dict() for t, r in llm.items()}
        if not quiet:
            for r in llm.values():
                out.print(str(r))
        failed += [f"llm parity failed: {r}" for r in llm.values() if not r.passed]
    if "vision" in manifest and ggufs and wanted & {"e2e", "task"}:
        for name, level in _runtime_levels(
            checkpoint,
            bundle,
            manifest,
            qa,
            video_dir,
            wanted,
            e2e_videos,
            questions,
            precision,
            standin,
            quiet,
        ).items():
            result[name] = level.to_dict()
            if not quiet:
                out.print(str(level))
            if not level.passed:
                failed.append(f"{name} parity failed: {level}")
    if json_out is not None:
        emit_json(result, json_out)
    if failed:
        raise CheckFailed("; ".join(failed))


def _check_source(checkpoint: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Warn when --checkpoint is not the one the bundle was exported from: every level would then
    compare two different models, and its failures would look like export bugs."""
    from panda_edge.bundle import exported_from
    from panda_edge.model.checkpoint import weight_files
    from panda_edge.model.videopanda import resolve_checkpoint

    source = (manifest.get("source") or {}).get("checkpoint")
    matches = exported_from(manifest, weight_files(resolve_checkpoint(checkpoint)))
    if matches is False:  # stderr, so also when the JSON goes to stdout
        err.print(
            f"warning: --checkpoint {checkpoint} holds other weights than the bundle was exported from "
            f"({source}); the levels below compare two different models",
            style="yellow",
            highlight=False,
        )
    return {"checkpoint": source, "matches": matches}


def _stab_levels(
    checkpoint: str, bundle: Path, chosen: list[Path], precision: Any, quiet: bool
) -> dict[str, Any]:
    """stab_fp32, and stab_int8 when the bundle has INT8 graphs: one reference run per video."""
    import tempfile

    from panda_edge.model.vision import VisionTower
    from panda_edge.parity.clips import write_parity_clips
    from panda_edge.parity.stab import bundle_vision_parity
    from panda_edge.runtime.vision import TorchVisionReference

    if not quiet:
        err.print(f"loading the vision reference (STAB + projector) from {checkpoint}", highlight=False)
    tower = VisionTower.from_checkpoint(checkpoint, precision)
    with tempfile.TemporaryDirectory(prefix="panda-parity-") as tmp:
        if not chosen:
            chosen = write_parity_clips(tmp, tower.config.vision.image_size)
        bar = progress_bar("comparing", total=len(chosen), enabled=not quiet)
        with TorchVisionReference(tower) as reference, bar as advance:
            return bundle_vision_parity(reference, bundle, chosen, tower.config.vision, on_video=advance)


def _overall(stab: Any) -> str:
    if hasattr(stab, "overall"):
        return str(stab.overall)
    return f"CPU graph {stab.cpu.overall}; TensorRT graph {stab.tensorrt.overall}"


def _print_stab(level: str, stab: Any) -> None:
    """Per video, then overall; for stab_int8 each graph's lines under its name."""
    parts = (
        {level: stab}
        if hasattr(stab, "overall")
        else {
            f"{level} (CPU graph)": stab.cpu,
            f"{level} (TensorRT graph)": stab.tensorrt,
        }
    )
    for name, part in parts.items():
        out.print(f"[bold]{name}[/]")
        for video in part.videos:
            out.print(str(video))
        out.print(str(part.overall))


def _tokenizer_level(checkpoint: str, bundle: Path, manifest: dict[str, Any]):
    """llama.cpp's ids (a GGUF's vocabulary only) vs SentencePiece's: no weights are loaded."""
    from panda_edge.bundle import bundle_file
    from panda_edge.model.checkpoint import TOKENIZER_FILE
    from panda_edge.model.videopanda import resolve_checkpoint
    from panda_edge.optional import llama_cpp
    from panda_edge.parity.llm import hf_tokenizer_agreement, tokenizer_parity

    llama_cpp()
    tokenizer_file = resolve_checkpoint(checkpoint) / TOKENIZER_FILE
    ggufs = manifest["llm"]["gguf"]
    gguf = bundle_file(bundle, manifest, f"llm.gguf.{'f32' if 'f32' in ggufs else next(iter(ggufs))}.file")
    tokenizer = tokenizer_parity(gguf, tokenizer_file)
    tokenizer.others["transformers_llama_tokenizer"] = hf_tokenizer_agreement(tokenizer_file)
    return tokenizer


def _llm_level(
    checkpoint: str, bundle: Path, manifest: dict[str, Any], precision: Any, standin: bool, quiet: bool
):
    """Every GGUF type in the bundle against the Llama alone; the reference is freed before llama.cpp
    loads a GGUF. `standin`: the f16 GGUF is judged in place of a missing f32 one."""
    from panda_edge.bundle import bundle_file
    from panda_edge.model.checkpoint import TOKENIZER_FILE
    from panda_edge.model.videopanda import resolve_checkpoint
    from panda_edge.optional import llama_cpp
    from panda_edge.parity.llm import llm_parity, parity_sequences
    from panda_edge.parity.llm_reference import reference_logits
    from panda_edge.prompt import PromptTokenizer

    llama_cpp()
    directory = resolve_checkpoint(checkpoint)
    sequences = parity_sequences(PromptTokenizer(directory / TOKENIZER_FILE))
    if not quiet:
        err.print(f"loading the LLM reference ({precision.dtype}) from {checkpoint}", highlight=False)
    with progress_bar("reference logits", total=len(sequences), enabled=not quiet) as advance:
        reference = reference_logits(directory, sequences, precision, on_sequence=advance)
    ggufs = manifest["llm"]["gguf"]
    paths = {t: bundle_file(bundle, manifest, f"llm.gguf.{t}.file") for t in ggufs}
    with progress_bar("llama.cpp logits", total=len(paths), enabled=not quiet) as advance:
        return llm_parity(reference, paths, sequences, on_gguf=advance, f16_standin=standin)


LEVELS = ("stab_fp32", "stab_int8", "llm", "tokenizer", "e2e", "task")


def _levels(text: str | None) -> set[str]:
    from panda_edge.errors import PandaError

    if text is None:
        return set(LEVELS)
    chosen = {t.strip() for t in text.split(",") if t.strip()}
    unknown = chosen - set(LEVELS)
    if unknown or not chosen:
        raise PandaError(
            f"unknown parity level(s) {', '.join(sorted(unknown)) or text!r}; choose from {', '.join(LEVELS)}"
        )
    return chosen


def _runtime_levels(
    checkpoint: str,
    bundle: Path,
    manifest: dict[str, Any],
    qa: Path | None,
    video_dir: Path | None,
    wanted: set[str],
    e2e_videos: int,
    max_questions: int | None,
    precision: Any,
    standin: bool,
    quiet: bool,
) -> dict[str, Any]:
    """e2e (the f32 GGUF, or f16 over float16 weights) and task (fp32 vision, and int8 when calibrated)
    on a QA set. The whole reference answers first and is freed before the runtime loads the GGUF: at
    7B the two do not fit in memory together."""
    import gc

    from panda_edge.errors import PandaError
    from panda_edge.model.videopanda import VideoPanda, reference_answerer
    from panda_edge.parity.e2e import one_question_per_video
    from panda_edge.parity.runtime_answers import MAX_NEW_TOKENS, measure_e2e, measure_task, reference_tokens
    from panda_edge.parity.task import evaluate, read_questions

    if qa is None:
        if checkpoint != "tiny":
            if not quiet:
                err.print("e2e/task skipped: give --qa QA.json (and --video-dir) with questions about videos")
            return {}
        from panda_edge.demo import cache_dir, toy_world

        qa = toy_world(cache_dir() / "parity") / "heldout.json"
    if not qa.is_file():
        raise PandaError(f"{qa}: no such QA file")
    videos_dir = video_dir or qa.parent / "videos"
    if not videos_dir.is_dir():
        raise PandaError(f"{videos_dir}: no such video directory; give --video-dir")
    questions = read_questions(qa)
    if max_questions is not None:
        questions = questions[:max_questions]
    ggufs = manifest["llm"]["gguf"]
    e2e_gguf = "f32" if "f32" in ggufs else "f16" if standin else None
    if "e2e" in wanted and e2e_gguf is None and not quiet:
        err.print("e2e skipped: it needs the f32 GGUF (panda export --target gguf --gguf-type f32)")
    chosen = one_question_per_video(questions, e2e_videos) if "e2e" in wanted and e2e_gguf else []
    if not chosen and "task" not in wanted:
        return {}  # no level left to run: the reference is not loaded
    if not quiet:
        err.print(f"loading the PyTorch reference ({precision.dtype}) from {checkpoint}", highlight=False)
    model = VideoPanda.from_pretrained(checkpoint, precision)
    expected, reference = None, None
    if chosen:
        with progress_bar("e2e reference answers", total=len(chosen), enabled=not quiet) as advance:
            expected = reference_tokens(model, chosen, videos_dir, on_video=advance)
    if "task" in wanted:
        with progress_bar("task reference answers", total=len(questions), enabled=not quiet) as advance:
            answerer = reference_answerer(model, MAX_NEW_TOKENS)
            reference = evaluate(answerer, questions, videos_dir, on_answer=advance)
    del model
    gc.collect()
    levels: dict[str, Any] = {}
    if expected is not None:
        with progress_bar("e2e runtime answers", total=len(chosen), enabled=not quiet) as advance:
            levels["e2e"] = measure_e2e(
                expected,
                bundle,
                chosen,
                videos_dir,
                e2e_gguf,
                on_video=advance,
                f16_standin=e2e_gguf == "f16",
            )
    if reference is not None:
        gguf_type = "q8_0" if "q8_0" in ggufs else None
        for vision in ["fp32", *(["int8"] if manifest.get("vision_int8") else [])]:
            with progress_bar(f"task answers ({vision})", total=len(questions), enabled=not quiet) as advance:
                task = measure_task(
                    reference, bundle, questions, videos_dir, gguf_type, vision, on_answer=advance
                )
            levels["task" if vision == "fp32" else f"task_{vision}"] = task
        if "f32" in ggufs and gguf_type not in (None, "f32"):
            from panda_edge.parity.runtime_answers import measure_gguf_agreement

            task = levels["task"]
            task.gguf_agreement = measure_gguf_agreement(bundle, task, questions, videos_dir)
    return levels
