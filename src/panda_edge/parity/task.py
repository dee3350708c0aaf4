"""Task accuracy: normalized exact match on a video QA set, overall and per question type.

Any answerer works (the PyTorch reference, the runtime), so the same questions and the same
normalization judge every path. No torch here.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Sequence
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
    predictions: list[dict[str, str | bool]] = field(default_factory=list)

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


def read_questions(path: str | Path) -> list[Question]:
    """Flat `question`/`answer` fields, or the first turn of Video-ChatGPT `conversations`."""
    try:
        entries = json.loads(Path(path).read_text())
        out = []
        for i, entry in enumerate(entries):
            if "question" in entry:
                question, answer = entry["question"], entry["answer"]
            else:
                turns = entry["conversations"]
                question, answer = turns[0]["value"].replace("<video>", "").strip(), turns[1]["value"]
            out.append(
                Question(str(entry.get("id", i)), entry["video"], question, answer, entry.get("type", ""))
            )
        return out
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise PandaError(f"{path}: not a QA file with video/question/answer entries ({exc})") from None


def evaluate(
    answer: Answerer,
    questions: Sequence[Question],
    videos_dir: str | Path,
    on_answer: Callable[[int], None] | None = None,
) -> QAResult:
    result = QAResult()
    videos_dir = Path(videos_dir)
    for i, q in enumerate(questions):
        predicted = answer(videos_dir / q.video, q.question)
        ok = normalize_answer(predicted) == normalize_answer(q.answer)
        result.questions += 1
        result.correct += ok
        counts = result.per_type.setdefault(q.type or "all", [0, 0])
        counts[0] += ok
        counts[1] += 1
        result.predictions.append({"id": q.id, "prediction": predicted, "answer": q.answer, "correct": ok})
        if on_answer is not None:
            on_answer(i + 1)
    return result
