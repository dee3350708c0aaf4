"""Answering a whole QA set by work items, in this process or spread over workers, resumable.

A work item is one video and all its questions, so a video is decoded once. What answers is an
`AnswererSpec` (the PyTorch reference, the runtime on a bundle, or both), which any process can
open: this one, or each of a Ray cluster's workers (scaleout/). Every finished item's records go to a
journal (JSON lines) as they arrive; a run given the same journal skips the questions it holds, so an
interrupted run resumes, and each answer is recorded once by its question id. A video that cannot be
read becomes an error on each of its questions instead of ending the run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from panda_edge.backends import FP32
from panda_edge.errors import PandaError
from panda_edge.parity.task import QAResult, Question, normalize_answer, score

ANSWERERS = ("reference", "runtime")
# A runner answers items somewhere and yields each item's records as it finishes (any order).
Runner = Callable[["AnswererSpec", Sequence["WorkItem"], Path], Iterable[list[dict[str, Any]]]]


@dataclass(frozen=True)
class WorkItem:
    video: str
    questions: tuple[Question, ...]


def work_items(questions: Sequence[Question]) -> list[WorkItem]:
    """Questions grouped by video, in the order the videos first appear."""
    grouped: dict[str, list[Question]] = {}
    for q in questions:
        grouped.setdefault(q.video, []).append(q)
    return [WorkItem(video, tuple(qs)) for video, qs in grouped.items()]


@dataclass(frozen=True)
class AnswererSpec:
    """What answers, as plain values any process can rebuild: the reference from `checkpoint` (with
    `precision`, a ReferencePrecision) and/or the runtime on `bundle` (ONNX Runtime vision of
    `vision_precision`, the `gguf_type` GGUF, as `panda run` runs it)."""

    checkpoint: str | None = None
    precision: Any = None
    bundle: str | None = None
    vision_precision: str = FP32
    gguf_type: str | None = None
    threads: int | None = None
    max_new_tokens: int = 16

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, part in zip(ANSWERERS, (self.checkpoint, self.bundle), strict=True) if part)

    def open(self) -> Answerers:
        answerers: dict[str, Callable[[Path, str], str]] = {}
        closers: list[Callable[[], None]] = []
        if self.checkpoint is not None:
            from panda_edge.model.videopanda import VideoPanda, reference_answerer

            model = VideoPanda.from_pretrained(self.checkpoint, self.precision)
            answerers["reference"] = reference_answerer(model, self.max_new_tokens)
        if self.bundle is not None:
            from panda_edge.runtime.pipeline import VideoRuntime

            runtime = VideoRuntime(
                self.bundle, precision=self.vision_precision, gguf_type=self.gguf_type, threads=self.threads
            )
            answerers["runtime"] = lambda video, q: runtime.answer(video, q, self.max_new_tokens).text
            closers.append(runtime.close)
        return Answerers(answerers, closers)


@dataclass
class Answerers:
    answerers: dict[str, Callable[[Path, str], str]]
    closers: list[Callable[[], None]] = field(default_factory=list)

    def answer(self, item: WorkItem, videos_dir: Path) -> list[dict[str, Any]]:
        """One record per question: its id, video, type, gold answer, each answerer's answer, and the
        error that kept the video from being answered (then the answers are None)."""
        records = [
            {"id": q.id, "video": q.video, "type": q.type, "answer": q.answer, "error": None}
            | dict.fromkeys(self.answerers)
            for q in item.questions
        ]
        video = Path(videos_dir) / item.video
        try:
            if not video.is_file():
                raise PandaError(f"{video}: no such video file")
            for name, answer in self.answerers.items():
                for record, q in zip(records, item.questions, strict=True):
                    record[name] = answer(video, q.question)
        except PandaError as exc:
            for record in records:
                record.update(dict.fromkeys(self.answerers), error=str(exc))
        return records

    def close(self) -> None:
        for close in self.closers:
            close()


def local_runner(spec: AnswererSpec, items: Sequence[WorkItem], videos_dir: Path) -> Iterator[list[dict]]:
    """Every item in this process, one after another."""
    answerers = spec.open()
    try:
        for item in items:
            yield answerers.answer(item, videos_dir)
    finally:
        answerers.close()


class Journal:
    """Finished records, one JSON line each, appended (and flushed to disk) as items finish."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> dict[str, dict[str, Any]]:
        """What earlier runs finished, by question id; a line cut short by a crash is ignored."""
        done: dict[str, dict[str, Any]] = {}
        if not self.path.is_file():
            return done
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                done.setdefault(str(record["id"]), record)
            except (ValueError, KeyError, TypeError):
                continue
        return done

    def add(self, records: Sequence[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
            f.flush()
            os.fsync(f.fileno())


@dataclass
class QARun:
    """The records of a run by question id, and how many came from the journal of an earlier one."""

    records: dict[str, dict[str, Any]]
    resumed: int = 0
    answered_items: int = 0


def answer_questions(
    questions: Sequence[Question],
    videos_dir: str | Path,
    spec: AnswererSpec,
    journal: Journal | None = None,
    runner: Runner = local_runner,
    on_answers: Callable[[int], None] | None = None,
) -> QARun:
    """Answer every question not already in `journal`, item by item, through `runner`; `on_answers`
    receives the number of questions done so far (resumed ones included)."""
    done = journal.records() if journal is not None else {}
    wanted = {q.id for q in questions}
    run = QARun({i: r for i, r in done.items() if i in wanted})
    run.resumed = len(run.records)
    pending = [item for item in work_items(questions) if any(q.id not in run.records for q in item.questions)]
    if on_answers is not None:
        on_answers(len(run.records))
    for records in runner(spec, pending, Path(videos_dir)):
        fresh = [r for r in records if r["id"] not in run.records]  # a retried item is recorded once
        run.records.update((r["id"], r) for r in fresh)
        if journal is not None:
            journal.add(fresh)
        run.answered_items += 1
        if on_answers is not None:
            on_answers(len(run.records))
    return run


def results(questions: Sequence[Question], run: QARun, name: str) -> QAResult:
    """One answerer's exact-match result, as `evaluate` gives it."""
    return score(questions, {q.id: run.records.get(q.id, {}).get(name) for q in questions})


def qa_report(questions: Sequence[Question], run: QARun, names: Sequence[str]) -> dict[str, Any]:
    """Accuracy per answerer (overall and per type), their agreement, errors and every prediction."""
    report: dict[str, Any] = {name: results(questions, run, name).to_dict() for name in names}
    if len(names) == 2:
        report["agreement"] = agreement(questions, run, *names)
    errors = [r for r in (run.records.get(q.id) for q in questions) if r and r["error"]]
    report["errors"] = len(errors)
    report["resumed"] = run.resumed
    report["predictions"] = [run.records[q.id] for q in questions if q.id in run.records]
    return report


def agreement(questions: Sequence[Question], run: QARun, a: str, b: str) -> dict[str, Any]:
    """The share of questions where the two answerers' normalized answers are the same, overall and
    per question type."""
    same: dict[str, list[int]] = {}
    for q in questions:
        record = run.records.get(q.id, {})
        x, y = record.get(a), record.get(b)
        agree = x is not None and y is not None and normalize_answer(x) == normalize_answer(y)
        counts = same.setdefault(q.type or "all", [0, 0])
        counts[0] += agree
        counts[1] += 1
    total = sum(n for _, n in same.values())
    return {
        "overall": round(sum(c for c, _ in same.values()) / total, 4) if total else None,
        "per_type": {t: round(c / n, 4) for t, (c, n) in sorted(same.items())},
    }
