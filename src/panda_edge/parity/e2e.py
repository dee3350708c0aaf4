"""End-to-end and task parity: the runtime's answers against the PyTorch reference's (no torch here).

e2e: greedy answers, token for token, one question per video (DESIGN.md §5: identical with fp32
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
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.videos > 0 and self.identical_answers == self.videos

    def to_dict(self) -> dict[str, Any]:
        return {
            "videos": self.videos,
            "identical_answers": self.identical_answers,
            "passed": self.passed,
            **self.config,
            "mismatches": self.mismatches,
        }

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"e2e       {self.identical_answers}/{self.videos} answers token-for-token identical  {verdict}"
        )


def e2e_parity(
    reference: Sequence[list[int]],
    runtime: TokenAnswerer,
    questions: Sequence[Question],
    videos_dir: str | Path,
    on_video: Callable[[int], None] | None = None,
) -> E2eParity:
    """The runtime's answers against the reference's, given (one token list per question): at 7B the
    reference and the runtime do not fit in memory together, so the reference answers first."""
    result = E2eParity()
    for i, (q, expected) in enumerate(zip(questions, reference, strict=True)):
        got = runtime(Path(videos_dir) / q.video, q.question)
        result.videos += 1
        if expected == got:
            result.identical_answers += 1
        else:
            result.mismatches.append(
                {"video": q.video, "question": q.question, "reference": expected, "runtime": got}
            )
        if on_video is not None:
            on_video(i + 1)
    return result


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
