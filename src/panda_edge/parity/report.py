"""`panda parity` as one call: a bundle's engines against the PyTorch reference, every level it holds.

stab_fp32 when the bundle holds the ONNX graph; stab_int8 when it holds the INT8 graphs (after
panda calibrate); llm and tokenizer when it holds GGUF files; e2e (f32 GGUF) and task when it holds
both and there are questions (`qa`, or the held-out toy world for the embedded tiny model). The
command line, a server or a batch job call `run_parity` and render what it returns.
"""

from __future__ import annotations

import gc
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from panda_edge.backends import (
    CPU,
    DEVICES,
    FP16,
    INT8,
    ORT,
    PRECISIONS,
    REFERENCE_GGUF_TYPE,
    STANDIN_GGUF_TYPE,
    TORCH,
    default_precision,
)
from panda_edge.bundle import VISION, VISION_INT8, Manifest, exported_from
from panda_edge.errors import PandaError
from panda_edge.runtime.options import RuntimeOptions

if TYPE_CHECKING:
    from panda_edge.model.loading import ReferencePrecision
    from panda_edge.parity.llm import LogitsParity, TokenizerParity
    from panda_edge.parity.qa_jobs import Runner

log = logging.getLogger(__name__)

LEVELS = ("stab_fp32", "stab_int8", "stab_fp16", "llm", "tokenizer", "e2e", "task")

# progress(description, total) -> a context manager that yields advance(completed)
Progress = Callable[[str, int | None], AbstractContextManager[Callable[[int], None]]]


@contextmanager
def no_progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    yield lambda completed: None


@dataclass
class ParityRun:
    """What `run_parity` found: the report (the JSON document) and one line per failed level."""

    report: dict[str, Any]
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def check_levels(levels: Sequence[str] | None) -> set[str]:
    """The levels asked for (None: all); an unknown or empty choice is bad input."""
    if levels is None:
        return set(LEVELS)
    chosen = {t.strip() for t in levels if t.strip()}
    unknown = chosen - set(LEVELS)
    if unknown or not chosen:
        raise PandaError(
            f"unknown parity level(s) {', '.join(sorted(unknown)) or ','.join(levels)!r}; "
            f"choose from {', '.join(LEVELS)}"
        )
    return chosen


@dataclass(frozen=True)
class ParityOptions:
    """What to check, on what: `videos` for the stab levels (default: four generated clips); `qa` and
    `video_dir` for e2e and task; `levels` (None: all); `runner` (parity.qa_jobs; a Ray cluster's,
    say) answers the task level's questions by video, the reference and the runtime side by side."""

    videos: Sequence[Path] = ()
    qa: Path | None = None
    video_dir: Path | None = None
    levels: Sequence[str] | None = None
    e2e_videos: int = 20
    max_questions: int | None = None
    runner: Runner | None = None
    threads: int | None = None  # the runtime's CPU threads (None: host.default_threads)
    # where e2e and task encode video: cpu (ONNX Runtime on the bundle's graphs) or cuda (the
    # checkpoint's vision part through PyTorch on the GPU); and the decoder's layers on the GPU
    vision_device: str = CPU
    n_gpu_layers: int = 0

    def runtime(self, checkpoint: str) -> RuntimeOptions:
        """The runtime options e2e and task start from (each level sets its precision and GGUF)."""
        if self.vision_device not in DEVICES[TORCH]:
            choices = ", ".join(DEVICES[TORCH])
            raise PandaError(f"unknown --vision-device '{self.vision_device}'; choose one of: {choices}")
        if self.vision_device == CPU:
            return RuntimeOptions(threads=self.threads, n_gpu_layers=self.n_gpu_layers)
        return RuntimeOptions(
            vision=TORCH,
            checkpoint=checkpoint,
            device=self.vision_device,
            threads=self.threads,
            n_gpu_layers=self.n_gpu_layers,
        )


@dataclass(frozen=True)
class ParityContext:
    """What every level reads: the bundle (its checked manifest), the reference checkpoint and how it
    runs, and where progress goes."""

    checkpoint: str
    manifest: Manifest
    precision: ReferencePrecision
    progress: Progress
    step: Callable[[str], None]
    # Without an f32 GGUF, the f16 one stands in over float16-stored weights: it holds them exactly
    # (a 7B f32 GGUF is 27 GB); judged by its error's size (parity/llm.py F16_STANDIN_MAX_REL).
    standin: bool
    # e2e and task's vision backend and device, threads, GPU layers
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)

    @property
    def bundle(self) -> Path:
        return self.manifest.root

    @property
    def task_precisions(self) -> list[str]:
        """The precisions the task level answers with: each its vision backend runs, the int8 graph
        when calibrated."""
        return [
            p for p in PRECISIONS[self.runtime.vision] if p != INT8 or self.manifest.has_graph(VISION_INT8)
        ]


def run_parity(
    checkpoint: str,
    bundle: Path,
    options: ParityOptions = ParityOptions(),
    precision: ReferencePrecision | None = None,
    progress: Progress = no_progress,
    on_step: Callable[[str], None] | None = None,
    on_level: Callable[[str, Any], None] | None = None,
) -> ParityRun:
    """Check `bundle` against the reference `checkpoint` at every level it holds (of `options.levels`).

    `precision` is the reference's (default fp32 on CPU). `on_level(name, result)` receives each
    level's result as it is done (its `str()` is a report line); `on_step` says what is happening,
    `progress` draws the long loops.
    """
    from panda_edge.model.loading import ReferencePrecision
    from panda_edge.model.videopanda import describe_reference

    step = on_step or (lambda message: None)
    done = on_level or (lambda name, result: None)
    missing = [str(v) for v in options.videos if not Path(v).is_file()]
    if missing:
        raise PandaError(f"no such video file: {', '.join(missing)}")
    manifest = Manifest.load(bundle)
    has_vision, ggufs = manifest.has_graph(VISION), manifest.ggufs
    if not has_vision and not ggufs:
        raise PandaError(
            f"{bundle}: the bundle holds neither the vision graph nor a GGUF; nothing to compare"
        )
    wanted = check_levels(options.levels)
    precision = precision or ReferencePrecision()
    report: dict[str, Any] = {
        "source": _check_source(checkpoint, manifest),
        "reference": describe_reference(checkpoint, precision),
    }
    ref = report["reference"]
    step(f"reference: {ref['dtype']} on {ref['device']}, weights stored as {ref['weights_stored']}")
    standin = (
        REFERENCE_GGUF_TYPE not in ggufs and STANDIN_GGUF_TYPE in ggufs and ref["weights_stored"] == "float16"
    )
    runtime = options.runtime(checkpoint)
    if runtime.vision == TORCH:
        runtime.torch_precision()  # --vision-device cuda without a GPU: exit 2 before the reference loads
    ctx = ParityContext(checkpoint, manifest, precision, progress, step, standin, runtime)
    run = ParityRun(report)
    if options.levels is not None and "stab_fp16" in wanted and runtime.vision != TORCH:
        step("stab_fp16 skipped: it checks the GPU vision backend, give --vision-device cuda")
    if has_vision and wanted & {"stab_fp32", "stab_int8", "stab_fp16"}:
        for level, stab in stab_levels(ctx, list(options.videos)).items():
            if level not in wanted:
                continue
            report.update(stab.to_dict())
            done(level, stab)
            if not stab:
                run.failures.append(f"{level} parity failed: {_overall(stab)}")
    if ggufs and "tokenizer" in wanted:
        tokenizer = tokenizer_level(ctx)
        report["tokenizer"] = tokenizer.to_dict()
        done("tokenizer", tokenizer)
        if not tokenizer.passed:
            run.failures.append(str(tokenizer))
    if ggufs and "llm" in wanted:
        llm = llm_level(ctx)
        report["llm"] = {t: r.to_dict() for t, r in llm.items()}
        done("llm", llm)
        run.failures += [f"llm parity failed: {r}" for r in llm.values() if not r.passed]
    if has_vision and ggufs and wanted & {"e2e", "task"}:
        for name, level in runtime_levels(ctx, options, wanted).items():
            report[name] = level.to_dict()
            done(name, level)
            if not level.passed:
                run.failures.append(f"{name} parity failed: {level}")
    return run


def _check_source(checkpoint: str, manifest: Manifest) -> dict[str, Any]:
    """Warn when `checkpoint` is not the one the bundle was exported from: every level would then
    compare two different models, and its failures would look like export bugs."""
    from panda_edge.model.checkpoint import weight_files
    from panda_edge.model.videopanda import resolve_checkpoint

    source = None if manifest.source is None else manifest.source.checkpoint
    matches = exported_from(manifest, weight_files(resolve_checkpoint(checkpoint)))
    if matches is False:
        log.warning(
            "--checkpoint %s holds other weights than the bundle was exported from (%s); the levels "
            "below compare two different models",
            checkpoint,
            source,
        )
    return {"checkpoint": source, "matches": matches}


def stab_levels(ctx: ParityContext, videos: list[Path]) -> dict[str, Any]:
    """stab_fp32, and stab_int8 when the bundle has INT8 graphs: one reference run per video."""
    from panda_edge.model.vision import VisionTower
    from panda_edge.parity.clips import write_parity_clips
    from panda_edge.parity.stab import bundle_vision_parity
    from panda_edge.runtime.vision import TorchVisionReference

    ctx.step(f"loading the vision reference (STAB + projector) from {ctx.checkpoint}")
    tower = VisionTower.from_checkpoint(ctx.checkpoint, ctx.precision)
    with tempfile.TemporaryDirectory(prefix="panda-parity-") as tmp:
        if not videos:
            videos = write_parity_clips(tmp, tower.config.vision.image_size)
        with TorchVisionReference(tower) as reference, ctx.progress("comparing", len(videos)) as advance:
            levels: dict[str, Any] = bundle_vision_parity(
                reference,
                ctx.bundle,
                videos,
                tower.config.vision,
                on_video=advance,
                threads=ctx.runtime.threads,
            )
            if ctx.runtime.vision == TORCH:  # --vision-device cuda: the GPU backend users run, at fp16
                levels.update(_torch_fp16_level(ctx, reference, videos, tower.config.vision))
            return levels


def _torch_fp16_level(ctx: ParityContext, reference: Any, videos: list[Path], vision: Any) -> dict[str, Any]:
    """stab_fp16: the checkpoint's vision part at fp16 where the runtime levels run it (a GPU)."""
    from panda_edge.model.vision import VisionTower
    from panda_edge.parity.stab import compare_engines
    from panda_edge.runtime.vision import TorchVisionReference

    gpu = replace(ctx.runtime, precision=FP16)
    ctx.step(f"stab_fp16: {gpu.vision_label} against the reference")
    with TorchVisionReference(VisionTower.from_checkpoint(ctx.checkpoint, gpu.torch_precision())) as engine:
        return compare_engines(reference, {"stab_fp16": (engine, "stab_fp16")}, videos, vision)


def _overall(stab: Any) -> str:
    if hasattr(stab, "overall"):
        return str(stab.overall)
    return f"CPU graph {stab.cpu.overall}; TensorRT graph {stab.tensorrt.overall}"


def tokenizer_level(ctx: ParityContext) -> TokenizerParity:
    """llama.cpp's ids (a GGUF's vocabulary only) vs SentencePiece's: no weights are loaded."""
    from panda_edge.model.checkpoint import TOKENIZER_FILE
    from panda_edge.model.videopanda import resolve_checkpoint
    from panda_edge.optional import llama_cpp
    from panda_edge.parity.llm import hf_tokenizer_agreement, tokenizer_parity

    llama_cpp()
    tokenizer_file = resolve_checkpoint(ctx.checkpoint) / TOKENIZER_FILE
    ggufs = ctx.manifest.ggufs
    gguf = ctx.manifest.gguf_path(REFERENCE_GGUF_TYPE if REFERENCE_GGUF_TYPE in ggufs else next(iter(ggufs)))
    tokenizer = tokenizer_parity(gguf, tokenizer_file)
    tokenizer.others["transformers_llama_tokenizer"] = hf_tokenizer_agreement(tokenizer_file)
    return tokenizer


def llm_level(ctx: ParityContext) -> dict[str, LogitsParity]:
    """Every GGUF type in the bundle against the Llama alone; the reference is freed before llama.cpp
    loads a GGUF. With `ctx.standin`, the f16 GGUF is judged in place of a missing f32 one."""
    from panda_edge.model.checkpoint import TOKENIZER_FILE
    from panda_edge.model.videopanda import resolve_checkpoint
    from panda_edge.optional import llama_cpp
    from panda_edge.parity.llm import llm_parity, parity_sequences
    from panda_edge.parity.llm_reference import reference_logits
    from panda_edge.prompt import PromptTokenizer

    llama_cpp()
    directory = resolve_checkpoint(ctx.checkpoint)
    sequences = parity_sequences(PromptTokenizer(directory / TOKENIZER_FILE))
    ctx.step(f"loading the LLM reference ({ctx.precision.dtype}) from {ctx.checkpoint}")
    with ctx.progress("reference logits", len(sequences)) as advance:
        reference = reference_logits(directory, sequences, ctx.precision, on_sequence=advance)
    paths = {t: ctx.manifest.gguf_path(t) for t in ctx.manifest.ggufs}
    with ctx.progress("llama.cpp logits", len(paths)) as advance:
        return llm_parity(reference, paths, sequences, on_gguf=advance, f16_standin=ctx.standin)


def runtime_levels(ctx: ParityContext, options: ParityOptions, wanted: set[str]) -> dict[str, Any]:
    """e2e (the f32 GGUF, or f16 over float16 weights) and task (fp32 vision, and int8 when calibrated)
    on a QA set. The whole reference answers first and is freed before the runtime loads the GGUF: at
    7B the two do not fit in memory together. With `options.runner`, the task level's answers come
    from it (each of its workers holds both)."""
    from panda_edge.fileio import cache_dir
    from panda_edge.model.videopanda import VideoPanda, reference_answerer
    from panda_edge.parity.e2e import one_question_per_video
    from panda_edge.parity.runtime_answers import (
        MAX_NEW_TOKENS,
        measure_e2e,
        measure_gguf_agreement,
        measure_task,
        reference_tokens,
    )
    from panda_edge.parity.task import evaluate, read_questions
    from panda_edge.toyworld.writer import tiny_training_world

    qa, step, progress, bundle = options.qa, ctx.step, ctx.progress, ctx.bundle
    if qa is None:
        if ctx.checkpoint != "tiny":
            step("e2e/task skipped: give --qa QA.json (and --video-dir) with questions about videos")
            return {}
        qa = tiny_training_world(cache_dir() / "parity") / "heldout.json"
    if not qa.is_file():
        raise PandaError(f"{qa}: no such QA file")
    videos_dir = options.video_dir or qa.parent / "videos"
    if not videos_dir.is_dir():
        raise PandaError(f"{videos_dir}: no such video directory; give --video-dir")
    questions = read_questions(qa, videos_dir)
    if options.max_questions is not None:
        questions = questions[: options.max_questions]
    ggufs = ctx.manifest.ggufs
    e2e_gguf = (
        REFERENCE_GGUF_TYPE if REFERENCE_GGUF_TYPE in ggufs else STANDIN_GGUF_TYPE if ctx.standin else None
    )
    if "e2e" in wanted and e2e_gguf is None:
        f32 = REFERENCE_GGUF_TYPE
        step(f"e2e skipped: it needs the {f32} GGUF (panda export --target gguf --gguf-type {f32})")
    chosen = one_question_per_video(questions, options.e2e_videos) if "e2e" in wanted and e2e_gguf else []
    levels: dict[str, Any] = {}
    if options.runner is not None and "task" in wanted:
        levels.update(_task_levels_by(ctx, options.runner, questions, videos_dir))
        wanted = wanted - {"task"}
    if not chosen and "task" not in wanted:
        return levels  # no level left to run: the reference is not loaded
    step(f"loading the PyTorch reference ({ctx.precision.dtype}) from {ctx.checkpoint}")
    model = VideoPanda.from_pretrained(ctx.checkpoint, ctx.precision)
    expected, reference = None, None
    if chosen:
        with progress("e2e reference answers", len(chosen)) as advance:
            expected = reference_tokens(model, chosen, videos_dir, on_video=advance)
    if "task" in wanted:
        with progress("task reference answers", len(questions)) as advance:
            answerer = reference_answerer(model, MAX_NEW_TOKENS)
            reference = evaluate(answerer, questions, videos_dir, on_answer=advance)
    del model
    gc.collect()
    if expected is not None:
        with progress("e2e runtime answers", len(chosen)) as advance:
            levels["e2e"] = measure_e2e(
                expected,
                bundle,
                chosen,
                videos_dir,
                e2e_gguf,
                ctx.runtime,
                on_video=advance,
                f16_standin=e2e_gguf == STANDIN_GGUF_TYPE,
            )
    if reference is not None:
        gguf_type = ctx.manifest.gguf().type  # the runtime's: q8_0 when the bundle has it
        for vision in ctx.task_precisions:
            with progress(f"task answers ({vision})", len(questions)) as advance:
                task = measure_task(
                    reference,
                    bundle,
                    questions,
                    videos_dir,
                    gguf_type,
                    vision,
                    ctx.runtime,
                    on_answer=advance,
                )
            levels[task_key(vision, ctx.runtime.vision)] = task
        if REFERENCE_GGUF_TYPE in ggufs and gguf_type != REFERENCE_GGUF_TYPE:
            task = levels["task"]
            task.gguf_agreement = measure_gguf_agreement(
                bundle, task, questions, videos_dir, runtime=ctx.runtime
            )
    return levels


def task_key(precision: str, backend: str = ORT) -> str:
    """task for the backend's default precision (fp32), task_int8 for the INT8 graph, task_fp16..."""
    return "task" if precision == default_precision(backend) else f"task_{precision}"


def _task_levels_by(
    ctx: ParityContext, runner: Runner, questions: Sequence[Any], videos_dir: Path
) -> dict[str, Any]:
    """The task level (and task_int8) with the answers from `runner`: the same questions, answerers
    and report keys as the single-process path, the reference and the runtime in each worker."""
    from panda_edge.parity.e2e import TaskParity
    from panda_edge.parity.qa_jobs import AnswererSpec, answer_questions, results
    from panda_edge.parity.runtime_answers import MAX_NEW_TOKENS, runtime_config

    gguf_type = ctx.manifest.gguf().type
    levels: dict[str, Any] = {}
    reference = None
    for vision in ctx.task_precisions:
        spec = AnswererSpec(
            ctx.checkpoint if reference is None else None,
            ctx.precision,
            str(ctx.bundle.resolve()),
            replace(ctx.runtime, precision=vision, gguf_type=gguf_type),
            max_new_tokens=MAX_NEW_TOKENS,
        )
        with ctx.progress(f"task answers ({vision})", len(questions)) as advance:
            run = answer_questions(questions, videos_dir, spec, runner=runner, on_answers=advance)
        reference = reference or results(questions, run, "reference")
        task = TaskParity(reference, results(questions, run, "runtime"))
        task.config = runtime_config(spec.runtime, gguf_type)
        levels[task_key(vision, ctx.runtime.vision)] = task
    # as the single-process path: the runtime's answers with the f32 GGUF beside the chosen one
    if REFERENCE_GGUF_TYPE in ctx.manifest.ggufs and gguf_type != REFERENCE_GGUF_TYPE:
        from panda_edge.parity.runtime_answers import measure_gguf_agreement

        levels["task"].gguf_agreement = measure_gguf_agreement(
            ctx.bundle, levels["task"], questions, videos_dir, runtime=ctx.runtime
        )
    return levels
