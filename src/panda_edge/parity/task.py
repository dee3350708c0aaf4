"""Task accuracy: normalized exact match on a video QA set, overall and per question type.

Any answerer works (the PyTorch reference, the runtime), so the same questions and the same
normalization judge every path. No torch here.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from panda_edge.errors import PandaError

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)

Answerer = Callable[[Path, str], str]


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation or articles, single spaces (SQuAD-style)."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


@dataclass(frozen=True)
class Question:
    id: str
    video: str
    question: str
    answer: str
    type: str = ""


@dataclass
class QAResult:
    questions: int = 0
    correct: int = 0
    per_type: dict[str, list[int]] = field(default_factory=dict)  # type -> [correct, total]
    predictions: list[dict[str, str | bool | None]] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.questions if self.questions else 0.0

    def to_dict(self, with_predictions: bool = False) -> dict:
        out = {
            "questions": self.questions,
            "correct": self.correct,
            "accuracy": round(self.accuracy, 4),
            "per_type": {t: round(c / n, 4) for t, (c, n) in sorted(self.per_type.items())},
            "per_type_questions": {t: n for t, (_, n) in sorted(self.per_type.items())},
        }
        if with_predictions:
            out["predictions"] = self.predictions
        return out


def read_questions(path: str | Path, videos_dir: str | Path | None = None) -> list[Question]:
    """A QA file in either form benchmarks ship:

    - Video-ChatGPT / Valley: `video` (a file name) with flat `question`/`answer`, or the first turn
      of `conversations`; `id` and `type` optional;
    - MSVD-QA / MSRVTT-QA / ActivityNet-QA: `video_id` (or `video`) without its extension, `question`,
      `answer`, `question_id`; the video is the file in `videos_dir` whose name without extension is
      the id, whatever the extension.

    Question ids must be unique: results are recorded by them."""
    try:
        entries = json.loads(Path(path).read_text())
        index = _videos_by_stem(videos_dir)
        out = []
        for i, entry in enumerate(entries):
            if "question" in entry:
                question, answer = entry["question"], entry["answer"]
            else:
                turns = entry["conversations"]
                question, answer = turns[0]["value"].replace("<video>", "").strip(), turns[1]["value"]
            video = str(entry["video"] if "video" in entry else entry["video_id"])
            video = index.get(video, video)
            qid = str(entry.get("question_id", entry.get("id", i)))
            out.append(Question(qid, video, question, str(answer), entry.get("type", "")))
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise PandaError(f"{path}: not a QA file with video/question/answer entries ({exc})") from None
    seen: set[str] = set()
    for q in out:
        if q.id in seen:
            raise PandaError(f"{path}: question id '{q.id}' appears twice; results are kept by id")
        seen.add(q.id)
    return out


def _videos_by_stem(videos_dir: str | Path | None) -> dict[str, str]:
    """file name without extension -> file name, for ids given without their extension."""
    if videos_dir is None or not Path(videos_dir).is_dir():
        return {}
    return {p.stem: p.name for p in sorted(Path(videos_dir).iterdir()) if p.is_file()}


def score(questions: Sequence[Question], answers: Mapping[str, str | None]) -> QAResult:
    """Exact match of `answers` (question id -> answer; None: the question could not be answered,
    a broken video say, and counts as wrong) on `questions`, in their order."""
    result = QAResult()
    for q in questions:
        predicted = answers.get(q.id)
        ok = predicted is not None and normalize_answer(predicted) == normalize_answer(q.answer)
        result.questions += 1
        result.correct += ok
        counts = result.per_type.setdefault(q.type or "all", [0, 0])
        counts[0] += ok
        counts[1] += 1
        result.predictions.append({"id": q.id, "prediction": predicted, "answer": q.answer, "correct": ok})
    return result


def evaluate(
    answer: Answerer,
    questions: Sequence[Question],
    videos_dir: str | Path,
    on_answer: Callable[[int], None] | None = None,
) -> QAResult:
    answers: dict[str, str | None] = {}
    for i, q in enumerate(questions):
        answers[q.id] = answer(Path(videos_dir) / q.video, q.question)
        if on_answer is not None:
            on_answer(i + 1)
    return score(questions, answers)
