"""The e2e and task levels wired to their engines: the PyTorch reference vs `VideoRuntime` on a bundle.

`panda parity` and `panda demo` both call these. The reference decodes each video once for all its
questions; the runtime keeps each video's prefix in its KV cache between questions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

from panda_edge.parity.e2e import E2eParity, TaskParity, TokenAnswerer, e2e_parity, task_parity
from panda_edge.parity.task import QAResult, Question
from panda_edge.runtime.pipeline import VideoRuntime

MAX_NEW_TOKENS = 16


def reference_tokens(model, max_new_tokens: int = MAX_NEW_TOKENS) -> TokenAnswerer:
    """(video, question) -> the reference's greedy token ids."""
    frames = lru_cache(maxsize=4)(model.load_frames)
    return lambda video, question: list(model.stream_generate(frames(Path(video)), question, max_new_tokens))


def measure_e2e(
    model,
    bundle: str | Path,
    questions: Sequence[Question],
    videos_dir: str | Path,
    threads: int | None = None,
    on_video: Callable[[int], None] | None = None,
) -> E2eParity:
    """fp32 vision (ONNX Runtime) + the f32 GGUF with an f32 KV cache against the reference."""
    with VideoRuntime(bundle, vision="ort", gguf_type="f32", kv_cache="f32", threads=threads) as runtime:
        result = e2e_parity(
            reference_tokens(model),
            lambda video, question: runtime.answer(video, question, MAX_NEW_TOKENS).tokens,
            questions,
            videos_dir,
            on_video,
        )
    result.config = {"vision": "ort fp32", "gguf": "f32", "kv_cache": "f32"}
    return result


def measure_task(
    model,
    bundle: str | Path,
    questions: Sequence[Question],
    videos_dir: str | Path,
    gguf_type: str | None = None,
    precision: str = "fp32",
    reference_result: QAResult | None = None,
    threads: int | None = None,
    on_answer: Callable[[int], None] | None = None,
) -> TaskParity:
    """Exact-match accuracy of the runtime (as users run it: f16 KV cache) and of the reference."""
    from panda_edge.model.videopanda import reference_answerer

    with VideoRuntime(
        bundle, vision="ort", precision=precision, gguf_type=gguf_type, threads=threads
    ) as runtime:
        result = task_parity(
            reference_answerer(model, MAX_NEW_TOKENS),
            lambda video, question: runtime.answer(video, question, MAX_NEW_TOKENS).text,
            questions,
            videos_dir,
            reference_result,
            on_answer,
        )
        result.config = {"vision": f"ort {precision}", "gguf": runtime.parts.gguf_type}
    return result


def measure_gguf_agreement(
    bundle: str | Path,
    task: TaskParity,
    questions: Sequence[Question],
    videos_dir: str | Path,
    baseline: str = "f32",
    threads: int | None = None,
) -> dict[str, float | int | str]:
    """How often the `task` run's answers (its GGUF type) are the answers the runtime gives with the
    `baseline` GGUF (same fp32 vision and KV cache type: only the decoder's weights differ). Only the
    baseline is run here; the other answers are the task level's own."""
    with VideoRuntime(bundle, gguf_type=baseline, threads=threads) as runtime:
        answers = [
            runtime.answer(Path(videos_dir) / q.video, q.question, MAX_NEW_TOKENS).text for q in questions
        ]
    same = sum(a == p["prediction"] for a, p in zip(answers, task.runtime.predictions, strict=True))
    return {
        "questions": len(questions),
        "same_answers": same,
        "agreement": round(same / len(questions), 4) if questions else 0.0,
        "baseline": baseline,
    }
