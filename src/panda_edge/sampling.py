"""Next-token choice on a logits vector, in numpy, so the reference and the runtime pick alike.

Greedy by default; temperature + nucleus (top-p) sampling with a seeded generator otherwise. Both
the PyTorch reference and the llama.cpp runtime call this one function, so with the same seed and
the same logits they choose the same token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens: temperature 0 (the default) is greedy; `seed` makes sampling repeatable."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)


GREEDY = Sampling()


def pick_token(
    logits: np.ndarray, sampling: Sampling = GREEDY, rng: np.random.Generator | None = None
) -> int:
    """Greedy argmax, or a draw from softmax(logits / temperature) cut to the top-p nucleus."""
    if sampling.greedy:
        return int(np.argmax(logits))
    if rng is None:
        raise ValueError("sampling needs a generator: pass sampling.generator()")
    scaled = logits.astype(np.float64) / sampling.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    sorted_probs = probs[order]
    keep = np.cumsum(sorted_probs) - sorted_probs < sampling.top_p
    kept = sorted_probs[keep] / sorted_probs[keep].sum()
    return int(order[keep][rng.choice(len(kept), p=kept)])


def top2_margin(logits: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 logit along the last axis: how close a greedy choice was to swapping."""
    top2 = np.partition(logits, -2, axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0]
