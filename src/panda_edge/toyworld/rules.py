"""Changed rules: a toy world whose answers to one question type follow a rule the embedded model
never saw, for fine-tuning to learn (`panda toyworld --rule`, tests/test_finetune.py)."""

from __future__ import annotations

from typing import Any

# name -> (question type, answer word -> the word the changed world answers with)
RULES: dict[str, tuple[str, dict[str, str]]] = {
    # "Which direction does the red square move?" answered with the opposite direction
    "reversed-motion": ("motion", {"left": "right", "right": "left", "up": "down", "down": "up"}),
}


def check_rule(rule: str | None) -> None:
    if rule is not None and rule not in RULES:
        raise ValueError(f"unknown rule '{rule}'; choose one of: {', '.join(RULES)}")


def apply_rule(entry: dict[str, Any], rule: str | None) -> dict[str, Any]:
    """A question entry with its answer changed when the rule covers its type."""
    if rule is None:
        return entry
    qtype, words = RULES[rule]
    if entry["type"] != qtype:
        return entry
    answer = words.get(entry["answer"], entry["answer"])
    turns = [dict(t) for t in entry["conversations"]]
    turns[-1]["value"] = answer
    return {**entry, "answer": answer, "conversations": turns}
