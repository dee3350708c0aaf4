"""The three-stage recipe of the paper (§3.2, Table 6), scaled down for models trained from scratch.

Paper (7B): stage 1 trains STAB + projector with the LLM frozen (lr 4e-4, warmup 0.03), stage 2 the
whole model end to end (4e-5, 0.01), stage 3 instruction tuning (2e-5, 0.01), one epoch each, AdamW
with a cosine schedule. The tiny backbone starts from random weights, so the rates are higher and the
epochs more. A text-only warm-up of the LLM (questions and answers without the video) is supported
(`text_only`) but not used: with it the model learned the answer priors first and then answered from
them, ignoring the video (held-out 38.6%); without it, 47.5% on the same data (ACCURACY notes).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    trainable: tuple[str, ...]  # parts of VideoPanda: stab, projector, llm
    lr: float
    warmup_ratio: float
    epochs: float
    batch_size: int
    packed: bool = True  # one sequence per video with all its questions as turns (cheaper per answer)
    text_only: bool = False  # questions and answers without the video
    data: tuple[str, ...] = ("captions", "qa")  # captions.json (video-text pairs) and/or train.json


# Stage 1 aligns on captions (the toy world's video-text pairs), stage 2 trains end to end on captions
# and questions with each video's turns packed in one sequence, stage 3 tunes on single questions as
# they are asked at inference.
TINY_RECIPE: tuple[Stage, ...] = (
    Stage("1", ("stab", "projector"), lr=2e-3, warmup_ratio=0.03, epochs=2, batch_size=8, data=("captions",)),
    Stage("2", ("stab", "projector", "llm"), lr=1e-3, warmup_ratio=0.01, epochs=6, batch_size=8),
    Stage(
        "3",
        ("stab", "projector", "llm"),
        lr=3e-4,
        warmup_ratio=0.01,
        epochs=0.5,
        batch_size=8,
        packed=False,
        data=("qa",),
    ),
)

STAGE_NAMES = tuple(stage.name for stage in TINY_RECIPE)
