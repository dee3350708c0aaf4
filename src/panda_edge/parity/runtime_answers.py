"""The e2e and task levels wired to their engines: the PyTorch reference vs `VideoRuntime` on a bundle.

`panda parity` and `panda demo` both call these. The reference answers first (`reference_tokens`,
`evaluate(reference_answerer(...))`), so a 7B reference can be freed before the runtime maps its
GGUF. The reference decodes each video once for all its questions; the runtime keeps each video's
prefix in its KV cache between questions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from functools import lru_cache
from pathlib import Path

from panda_edge.backends import FP32, REFERENCE_GGUF_TYPE
from panda_edge.parity.e2e import E2eParity, ReferenceAnswer, TaskParity, e2e_parity, task_parity
from panda_edge.parity.task import QAResult, Question
from panda_edge.runtime.options import RuntimeOptions

MAX_NEW_TOKENS = 16


def reference_tokens(
    model,
    questions: Sequence[Question],
    videos_dir: str | Path,
    max_new_tokens: int = MAX_NEW_TOKENS,
    on_video: Callable[[int], None] | None = None,
) -> list[ReferenceAnswer]:
    """The reference's greedy answer to each question with how close each choice was (e2e level)."""
    frames = lru_cache(maxsize=4)(model.load_frames)
    answers = []
    for i, q in enumerate(questions):
        answer = ReferenceAnswer([])
        video = frames(Path(videos_dir) / q.video)
        answer.tokens = list(model.stream_generate(video, q.question, max_new_tokens, margins=answer.margins))
        answers.append(answer)
        if on_video is not None:
            on_video(i + 1)
    return answers


def measure_e2e(
    reference: Sequence[ReferenceAnswer],
    bundle: str | Path,
    questions: Sequence[Question],
    videos_dir: str | Path,
    gguf_type: str = REFERENCE_GGUF_TYPE,
    runtime: RuntimeOptions = RuntimeOptions(),
    on_video: Callable[[int], None] | None = None,
    f16_standin: bool = False,
) -> E2eParity:
    """fp32 vision + the `gguf_type` GGUF with an f32 KV cache against the reference's answers
    (`reference_tokens`). `runtime` says which vision backend (ONNX Runtime, or the checkpoint's on a
    GPU), its threads and the decoder's GPU layers. The context holds a square video's prefix and one
    answer, not the model's 4096: an f32 KV cache for 4096 positions is 4.3 GB at 7B. `f16_standin`:
    the f16 GGUF stands in for f32, and answers may part at a near tie for its error
    (F16_STANDIN_MAX_REL)."""

    from panda_edge.bundle import Manifest
    from panda_edge.parity.llm import F16_STANDIN_MAX_REL
    from panda_edge.plan.vision import visual_tokens_per_video

    vision = asdict(Manifest.load(bundle, verify=False).config.vision)
    n_ctx = visual_tokens_per_video(vision) + 128 + MAX_NEW_TOKENS
    options = replace(runtime, precision=FP32, gguf_type=gguf_type, kv_type="f32", n_ctx=n_ctx)
    with options.open(bundle) as opened:
        result = e2e_parity(
            reference,
            lambda video, question: opened.answer(video, question, MAX_NEW_TOKENS).tokens,
            questions,
            videos_dir,
            on_video,
            tie_max_rel=F16_STANDIN_MAX_REL if f16_standin else None,
        )
    result.config = {**runtime_config(options, gguf_type), "kv_cache": "f32", "n_ctx": n_ctx}
    if f16_standin:
        result.config["f16_standin_max_rel"] = F16_STANDIN_MAX_REL
    return result


def measure_task(
    reference: QAResult,
    bundle: str | Path,
    questions: Sequence[Question],
    videos_dir: str | Path,
    gguf_type: str | None = None,
    precision: str = FP32,
    runtime: RuntimeOptions = RuntimeOptions(),
    on_answer: Callable[[int], None] | None = None,
) -> TaskParity:
    """Exact-match accuracy of the runtime (as users run it: f16 KV cache; `runtime`'s backend,
    threads and GPU layers at the vision `precision`) against the reference's result on the same
    questions (`evaluate(reference_answerer(model), ...)`)."""
    options = replace(runtime, precision=precision, gguf_type=gguf_type)
    with options.open(bundle) as opened:
        result = task_parity(
            reference,
            lambda video, question: opened.answer(video, question, MAX_NEW_TOKENS).text,
            questions,
            videos_dir,
            on_answer,
        )
        result.config = runtime_config(options, opened.parts.gguf_type)
    return result


def runtime_config(options: RuntimeOptions, gguf_type: str) -> dict[str, str]:
    """How a level's runtime ran, as its report names it: the vision backend, the GGUF and, when any,
    the decoder's layers on the GPU (strings: a task line joins them)."""
    config = {"vision": options.vision_label, "gguf": gguf_type}
    if options.n_gpu_layers:
        config["decoder"] = f"{options.n_gpu_layers} layers on the GPU"
    return config


def measure_gguf_agreement(
    bundle: str | Path,
    task: TaskParity,
    questions: Sequence[Question],
    videos_dir: str | Path,
    baseline: str = REFERENCE_GGUF_TYPE,
    runtime: RuntimeOptions = RuntimeOptions(),
) -> dict[str, float | int | str]:
    """How often the `task` run's answers (its GGUF type) are the answers the runtime gives with the
    `baseline` GGUF (same fp32 vision and KV cache type: only the decoder's weights differ). Only the
    baseline is run here; the other answers are the task level's own."""
    with replace(runtime, precision=FP32, gguf_type=baseline).open(bundle) as opened:
        answers = [
            opened.answer(Path(videos_dir) / q.video, q.question, MAX_NEW_TOKENS).text for q in questions
        ]
    same = sum(a == p["prediction"] for a, p in zip(answers, task.runtime.predictions, strict=True))
    return {
        "questions": len(questions),
        "same_answers": same,
        "agreement": round(same / len(questions), 4) if questions else 0.0,
        "baseline": baseline,
    }
