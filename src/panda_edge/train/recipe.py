"""The three-stage recipe of the paper (§3.2, Table 6), scaled down for models trained from scratch.

Paper (7B): stage 1 trains STAB + projector with the LLM frozen (lr 4e-4, warmup 0.03), stage 2 the
whole model end to end (4e-5, 0.01), stage 3 instruction tuning (2e-5, 0.01), one epoch each, AdamW
with a cosine schedule. The tiny backbone starts from random weights, so the rates are higher, the
epochs more, and stage 1 is short: a random frozen LLM has no language for the video to align to
(its caption loss stays at 5.0 nats), so most of the budget goes to stage 2. Measured on the 400-video
toy world, held-out exact match: 47.5% with turns packed one after another (later answers could be
copied from earlier turns), 61.0% with shared-prefix branches (train/data.py), 62.3% with this split
of the stages (274 s on 2 idle cores; 8 epochs in stage 2 took up to 303 s, over the 5-minute
budget). A text-only warm-up of the LLM (`text_only`) is supported but not used: with it the model
learned the answer priors first and then answered from them, ignoring the video (38.6%).
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
    packed: bool = True  # one sequence per video, its questions as branches after the shared prefix
    text_only: bool = False  # questions and answers without the video
    data: tuple[str, ...] = ("captions", "qa")  # captions.json (video-text pairs) and/or train.json


# Stage 1 aligns on captions (the toy world's video-text pairs), stage 2 trains end to end on captions
# and questions packed per video, stage 3 tunes on single questions as they are asked at inference.
TINY_RECIPE: tuple[Stage, ...] = (
    Stage(
        "1", ("stab", "projector"), lr=2e-3, warmup_ratio=0.03, epochs=0.25, batch_size=8, data=("captions",)
    ),
    Stage("2", ("stab", "projector", "llm"), lr=1e-3, warmup_ratio=0.01, epochs=7, batch_size=8),
    Stage(
        "3",
        ("stab", "projector", "llm"),
        lr=3e-4,
        warmup_ratio=0.01,
        epochs=0.25,
        batch_size=8,
        packed=False,
        data=("qa",),
    ),
)

STAGE_NAMES = tuple(stage.name for stage in TINY_RECIPE)
