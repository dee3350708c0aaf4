"""A planned scene as text: its caption and its Video-ChatGPT / Valley conversation entries."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from panda_edge.toyworld.scenes import FRAMES, Scene, direction

CAPTION_PROMPT = "Describe the video."


def caption(scene: Scene) -> str:
    """A dense description of the clip: every object in order of appearance, with what it does.

    The toy analogue of the video-text pairs of the paper's first two stages; each question's answer
    can be read from it.
    """
    parts = []
    for obj in sorted(scene.objects, key=lambda o: (o.first, o.start[0])):
        events = []
        if obj.first > 0:
            events.append("appears")
        elif obj.last < FRAMES - 1:
            events.append("disappears")
        way = direction(obj)
        if way is not None:
            events.append(f"moves {way}")
        parts.append(" ".join([obj.name, " and ".join(events)]).strip())
    return ", ".join(parts) + "."


def caption_entry(scene: Scene) -> dict[str, Any]:
    text = caption(scene)
    return {
        "id": f"{scene.video_id}_caption",
        "video": f"{scene.video_id}.mp4",
        "type": "caption",
        "conversations": [
            {"from": "human", "value": f"<video>\n{CAPTION_PROMPT}"},
            {"from": "gpt", "value": text},
        ],
        "question": CAPTION_PROMPT,
        "answer": text,
    }


def _drill_questions(scene: Scene) -> list[tuple[str, str, str]]:
    """A colour, a shape and a direction question for every object the balanced questions leave out.

    Training videos only: "What color is the ring?" needs the model to find the ring among the
    other shapes, and the balanced set asks that about one object in some videos; asking it about
    every object gives 3-4x the examples of this binding for the cost of a few text tokens. Motion
    questions about every moving shape give 7x the examples of the one in motion videos.
    """
    asked = {(t, a) for t, _, a in scene.questions}
    out = []
    for obj in scene.objects:
        way = direction(obj)
        if way is not None and not (scene.kind == "motion" and obj is scene.objects[0]):
            out.append(("motion", f"Which direction does the {obj.name} move?", way))
        if ("color", obj.color) not in asked:
            out.append(("color", f"What color is the {obj.shape}?", obj.color))
        if ("shape", obj.shape) not in asked:
            out.append(("shape", f"What shape is the {obj.color} object?", obj.shape))
    return out


def _entry(scene: Scene, entry_id: str, qtype: str, question: str, answer: str) -> dict[str, Any]:
    return {
        "id": entry_id,
        "video": f"{scene.video_id}.mp4",
        "type": qtype,
        "conversations": [
            {"from": "human", "value": f"<video>\n{question}"},
            {"from": "gpt", "value": answer},
        ],
        "question": question,
        "answer": answer,
    }


def question_entries(scene: Scene, drill: bool = False) -> list[dict[str, Any]]:
    """The scene's questions as Video-ChatGPT / Valley conversation entries (+ drill ones if asked)."""
    out = [_entry(scene, f"{scene.video_id}_{t}", t, q, a) for t, q, a in scene.questions]
    if drill:
        out += [
            _entry(scene, f"{scene.video_id}_{t}_drill{k}", t, q, a)
            for k, (t, q, a) in enumerate(_drill_questions(scene))
        ]
    return out


def corpus_text(qa_entries: Iterable[dict[str, Any]]) -> list[str]:
    """Each entry's question then its answer, in order (text for tokenizer training; no `<video>`)."""
    return [text for e in qa_entries for text in (e["question"], e["answer"])]
