"""Exact-match scoring of QA answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from panda_edge.errors import PandaError
from panda_edge.parity.task import Question, evaluate, normalize_answer, read_questions


def test_normalize_answer() -> None:
    assert normalize_answer("  The Red. ") == "red"
    assert normalize_answer("a  circle!") == "circle"
    assert normalize_answer("Left") == normalize_answer("left")
    assert normalize_answer("2") != normalize_answer("3")


def test_evaluate_counts_per_type(tmp_path: Path) -> None:
    questions = [
        Question("1", "a.mp4", "What color?", "red", "color"),
        Question("2", "a.mp4", "Which way?", "left", "motion"),
        Question("3", "b.mp4", "What color?", "blue", "color"),
    ]
    answers = {
        ("a.mp4", "What color?"): "Red.",
        ("a.mp4", "Which way?"): "right",
        ("b.mp4", "What color?"): "blue",
    }
    result = evaluate(lambda video, q: answers[(video.name, q)], questions, tmp_path)
    summary = result.to_dict()
    assert summary["questions"] == 3 and summary["correct"] == 2
    assert summary["per_type"] == {"color": 1.0, "motion": 0.0}


def test_read_questions_formats(tmp_path: Path) -> None:
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps([{"video": "v.mp4", "question": "Q?", "answer": "A", "type": "t"}]))
    conv = tmp_path / "conv.json"
    turns = [{"from": "human", "value": "<video>\nQ?"}, {"from": "gpt", "value": "A"}]
    conv.write_text(json.dumps([{"video": "v.mp4", "conversations": turns}]))
    assert read_questions(flat)[0].question == read_questions(conv)[0].question == "Q?"
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PandaError, match="not a QA file"):
        read_questions(bad)
