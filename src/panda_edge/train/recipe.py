"""The three-stage recipe of the paper (§3.2, Table 6), scaled down for models trained from scratch.

Paper (7B): stage 1 trains STAB + projector with the LLM frozen (lr 4e-4, warmup 0.03), stage 2 the
whole model end to end (4e-5, 0.01), stage 3 instruction tuning (2e-5, 0.01), one epoch each, AdamW
with a cosine schedule. The tiny backbone starts from random weights, so the rates are higher, the
epochs more, and stage 1 is short: a random frozen LLM has no language for the video to align to
(its caption loss stays at 5.0 nats), so most of the budget goes to stage 2; stage 3 is a short pass
over single questions as they are asked at inference.

On 2 cores for 5 minutes, what limits accuracy is how many optimizer steps fit, and on what:
- The LLM's size. With STAB + projector replaced by ideal per-cell object features (colour, shape and
  direction one-hot), a 4-layer, 256-wide Llama reached 51% held-out in this budget (340 steps) and
  70% with 2.5x the steps; a 2-layer, 128-wide one (the tiny preset) takes 170 ms a step instead of
  570 ms and reached 78%, and 88% on a 1200-video world instead of 400 (it memorised fewer videos).
- STAB learning shape and motion. With the real STAB the same model stays near chance on shape (33-40%)
  until the distillation loss (eq. 19) against the toy world's teacher (train/toy_teacher.py) is on:
  shape 100%, 82.6% overall with 7 epochs of stage 2 (367 s, over budget).
- Motion stays near chance (23-33%) in every run that fits, although a linear probe reads the
  direction from STAB's output (object-pooled and standardised) 90% of the time on held-out videos:
  the LLM does not learn to read it in these steps. STAB's outputs share a large constant part (the
  mean token has norm 8.5, a token 15): a fresh LLM trained for 840 steps on the embedded model's
  frozen outputs reads motion 40% of the time as they are and 82% with the mean token subtracted.
  Subtracting it in end-to-end training (a penalty, a running mean, or once at mid-stage 2) left
  motion at 25% and shape lower, and continuing the trained LLM on the centred frozen outputs gave
  28%. STAB's direction features come late: with STAB from 1.5 epochs of stage 2 instead of 4.5, the
  same fresh LLM reads motion 25% of the time.
- Colour questions ("What color is the ring?") find an object by its shape, a two-step lookup the
  captions do not teach (they teach colour -> shape, which shape questions reuse). With ideal features
  colour stays at chance (50-58%) after 4.5 epochs in all six variants tried: 8 heads, 3 layers, batch 4,
  lr 2e-3 with or without a 10% warm-up, or captions that also give each shape's colour; at 9 epochs
  (1170 steps, 228 s of LLM alone) it reaches 83% and the whole 93%. On the embedded model's frozen,
  centred STAB outputs a fresh LLM gets 85.3% after 1000 steps (159 s) and 87.1% after 1900 (300 s),
  colour 56-58% in both. So the 90% / 80%-motion goal does not fit in 5 minutes on 2 cores here.
- Runs vary with the seed more than with most settings: seeds 1 and 2 give 68.7% and 67.8% (shape 55%
  and 44%) where seed 0, the embedded model's, gives 79.6% (shape 97%), so single-run differences
  below ~10 points here are not significant.
Measured on the 1200-video toy world (696 held-out questions), one run each: stage 2 at 6 / 5.5 / 5 /
4.5 epochs gave 76.9% / 74.6% / 79.9% / 79.6% in 306 / 303 / 279 (298 on a rerun) / 243 s; 4.5 leaves
room for a busier machine at a cost the spread between runs already hides. Earlier, on the 400-video
world with the 4-layer Llama: 47.5% with turns packed one after another (later answers could be copied
from earlier turns), 61.0% with shared-prefix branches (train/data.py), 62.3% with the stage split
then. A text-only warm-up of the LLM (`text_only`) is supported but not used: with it the model learned
the answer priors first and then answered from them, ignoring the video (38.6%).
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
    fresh: tuple[str, ...] = ()  # parts re-initialised (from the seed) when the stage starts
    centre: bool = False  # subtract the mean visual token of the training videos (see trainer)
    distill: bool = True  # add the distillation loss when a teacher is given
    mirrors: tuple[str, ...] = ()  # mirrored copies of every training video added (data.MIRRORS)


# Stage 1 aligns on captions (the toy world's video-text pairs), stage 2 trains end to end on captions
# and questions packed per video, stage 3 tunes on single questions as they are asked at inference.
TINY_RECIPE: tuple[Stage, ...] = (
    Stage(
        "1", ("stab", "projector"), lr=2e-3, warmup_ratio=0.03, epochs=0.25, batch_size=8, data=("captions",)
    ),
    Stage("2", ("stab", "projector", "llm"), lr=1e-3, warmup_ratio=0.01, epochs=4.5, batch_size=8),
    Stage(
        "3",
        ("llm",),
        lr=1e-3,
        warmup_ratio=0.01,
        epochs=12.5,
        batch_size=8,
        fresh=("llm",),
        centre=True,
        distill=False,
        mirrors=("h", "v", "hv"),
    ),
)

STAGE_NAMES = tuple(stage.name for stage in TINY_RECIPE)
