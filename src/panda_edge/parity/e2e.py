"""End-to-end and task parity: the runtime's answers against the PyTorch reference's (no torch here).

e2e: greedy answers, token for token, one question per video (docs/design.md §5: identical with fp32
vision and an f32 GGUF). task: exact-match accuracy of both on the same QA set; the runtime passes
when it is within one point of the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from panda_edge.parity.task import QAResult, Question, evaluate

TASK_MAX_DELTA_POINTS = 1.0

TokenAnswerer = Callable[[Path, str], list[int]]


def one_question_per_video(questions: Sequence[Question], videos: int) -> list[Question]:
    """The first `videos` distinct videos, each with one question, rotating through question types."""
    by_video: dict[str, list[Question]] = {}
    for q in questions:
        by_video.setdefault(q.video, []).append(q)
    return [qs[i % len(qs)] for i, qs in enumerate(list(by_video.values())[:videos])]


@dataclass
class E2eParity:
    videos: int = 0
    identical_answers: int = 0
    near_tie_divergences: int = 0  # the f16 stand-in only: first difference at a reference near tie
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.videos > 0 and self.identical_answers + self.near_tie_divergences == self.videos

    def to_dict(self) -> dict[str, Any]:
        return {
            "videos": self.videos,
            "identical_answers": self.identical_answers,
            "near_tie_divergences": self.near_tie_divergences,
            "passed": self.passed,
            **self.config,
            "mismatches": self.mismatches,
        }

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        ties = f", {self.near_tie_divergences} part at a near tie" if self.near_tie_divergences else ""
        same = f"{self.identical_answers}/{self.videos} answers token-for-token identical"
        return f"e2e       {same}{ties}  {verdict}"


@dataclass
class ReferenceAnswer:
    """The reference's greedy tokens with (top-1 minus top-2 logit, largest |logit|) at each step."""

    tokens: list[int]
    margins: list[tuple[float, float]] = field(default_factory=list)

    def near_tie(self, step: int, max_rel: float) -> bool:
        """Whether logits that each move by at most `max_rel` x the largest could swap the choice at
        `step`: only a pair closer than twice that can."""
        if step >= len(self.margins):
            return False
        margin, scale = self.margins[step]
        return margin <= 2 * max_rel * scale


def e2e_parity(
    reference: Sequence[ReferenceAnswer],
    runtime: TokenAnswerer,
    questions: Sequence[Question],
    videos_dir: str | Path,
    on_video: Callable[[int], None] | None = None,
    tie_max_rel: float | None = None,
) -> E2eParity:
    """The runtime's answers against the reference's, given (one per question): at 7B the reference and
    the runtime do not fit in memory together, so the reference answers first.

    `tie_max_rel` (the f16 GGUF standing in for f32): answers may part at the first step where the
    reference's choice was a near tie for an error of that size (parity/llm.py F16_STANDIN_MAX_REL),
    the tokens before it identical.
    """
    result = E2eParity()
    for i, (q, expected) in enumerate(zip(questions, reference, strict=True)):
        got = runtime(Path(videos_dir) / q.video, q.question)
        result.videos += 1
        if expected.tokens == got:
            result.identical_answers += 1
        else:
            result.mismatches.append(_mismatch(q, expected, got, tie_max_rel))
            result.near_tie_divergences += result.mismatches[-1]["near_tie"]
        if on_video is not None:
            on_video(i + 1)
    return result


def _mismatch(q: Question, expected: ReferenceAnswer, got: list[int], tie_max_rel: float | None) -> dict:
    """Where the answers part, how close the reference's choice was there, and whether that is a tie."""
    step = next((k for k, (a, b) in enumerate(zip(expected.tokens, got, strict=False)) if a != b), None)
    step = min(len(expected.tokens), len(got)) if step is None else step
    return {
        "video": q.video,
        "question": q.question,
        "reference": expected.tokens,
        "runtime": got,
        "first_difference": step,
        "reference_margin": expected.margins[step][0] if step < len(expected.margins) else None,
        "near_tie": tie_max_rel is not None and expected.near_tie(step, tie_max_rel),
    }


@dataclass
class TaskParity:
    reference: QAResult
    runtime: QAResult
    config: dict[str, str] = field(default_factory=dict)
    gguf_agreement: dict[str, Any] | None = None  # the runtime's answers with this GGUF vs with f32

    @property
    def delta_points(self) -> float:
        return (self.runtime.accuracy - self.reference.accuracy) * 100

    @property
    def passed(self) -> bool:
        return abs(self.delta_points) <= TASK_MAX_DELTA_POINTS

    def to_dict(self) -> dict[str, Any]:
        return {
            "questions": self.reference.questions,
            "torch_accuracy": round(self.reference.accuracy, 4),
            "runtime_accuracy": round(self.runtime.accuracy, 4),
            "delta_points": round(self.delta_points, 2),
            "passed": self.passed,
            **self.config,
            "per_type": {
                "torch": self.reference.to_dict()["per_type"],
                "runtime": self.runtime.to_dict()["per_type"],
            },
            "answers_differ": sum(
                a["prediction"] != b["prediction"]
                for a, b in zip(self.reference.predictions, self.runtime.predictions, strict=True)
            ),
            **({"gguf_agreement": self.gguf_agreement} if self.gguf_agreement else {}),
            "predictions": [
                {"id": a["id"], "answer": a["answer"], "torch": a["prediction"], "runtime": b["prediction"]}
                for a, b in zip(self.reference.predictions, self.runtime.predictions, strict=True)
            ],
        }

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        label = " + ".join(self.config.values()) or "runtime"
        line = (
            f"task      {self.reference.questions} questions: torch {self.reference.accuracy:.1%}, "
            f"{label} {self.runtime.accuracy:.1%} ({self.delta_points:+.2f} points)  {verdict}"
        )
        if agreement := self.gguf_agreement:
            line += (
                f"\n          {self.config.get('gguf')} vs {agreement['baseline']} GGUF: same answer on "
                f"{agreement['same_answers']}/{agreement['questions']} ({agreement['agreement']:.1%})"
            )
        return line


def task_parity(
    reference: QAResult,
    runtime: Callable[[Path, str], str],
    questions: Sequence[Question],
    videos_dir: str | Path,
    on_answer: Callable[[int], None] | None = None,
) -> TaskParity:
    """The runtime's accuracy on `questions` against the reference's result on the same questions."""
    return TaskParity(reference, evaluate(runtime, questions, videos_dir, on_answer))
