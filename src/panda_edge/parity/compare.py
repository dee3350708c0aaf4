"""One comparison for any two engines' per-frame token lists (numpy only, no torch).

Numbers follow docs/design.md §5: cosine per token (minimum, mean and a histogram: the distribution
INT8 is judged by) and the largest absolute difference relative to the reference's largest
absolute value. A different token count is a shape mismatch: always a failure, reported with the
counts rather than numbers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Thresholds:
    """What a level judges; None: reported, not judged."""

    cosine_min: float | None = None
    max_abs_rel: float | None = None
    cosine_mean: float | None = None


# Pass thresholds per parity level (docs/design.md §5).
LEVELS: dict[str, Thresholds] = {
    "stab_fp32": Thresholds(cosine_min=0.99999, max_abs_rel=1e-3),
    "stab_int8": Thresholds(cosine_mean=0.99),
    # 16-bit vision (a TensorRT fp16 engine, --vision torch at fp16 or bf16): panda-edge's own bar,
    # between fp32's and INT8's (docs/design.md §5)
    "stab_fp16": Thresholds(cosine_min=0.999, max_abs_rel=1e-2),
}

# Upper edges of the cosine histogram's bins (the last bin is [0.9999, 1]); mergeable by adding.
COSINE_BINS = (0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999)
COSINE_BIN_LABELS = (
    f"< {COSINE_BINS[0]}",
    *(f"{low}-{high}" for low, high in itertools.pairwise(COSINE_BINS)),
    f">= {COSINE_BINS[-1]}",
)


@dataclass(frozen=True)
class OutputParity:
    """How close one output (a video's tokens, or all of them) is to the reference."""

    name: str
    thresholds: Thresholds
    tokens: int = 0
    cosine_min: float = math.nan
    cosine_mean: float = math.nan
    max_abs: float = math.nan
    reference_max_abs: float = math.nan
    mismatch: str | None = None  # a shape mismatch, described
    cosine_counts: tuple[int, ...] = ()  # tokens per COSINE_BIN_LABELS bin

    @property
    def max_abs_rel(self) -> float:
        if self.mismatch is not None:
            return math.nan
        return self.max_abs / self.reference_max_abs if self.reference_max_abs > 0 else self.max_abs

    @property
    def passed(self) -> bool:
        t = self.thresholds
        return (
            self.mismatch is None
            and (t.cosine_min is None or self.cosine_min >= t.cosine_min)
            and (t.cosine_mean is None or self.cosine_mean >= t.cosine_mean)
            and (t.max_abs_rel is None or self.max_abs_rel <= t.max_abs_rel)
        )

    @property
    def cosine_histogram(self) -> dict[str, int]:
        return dict(zip(COSINE_BIN_LABELS, self.cosine_counts, strict=False))  # () after a mismatch

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "passed": self.passed,
            "tokens": self.tokens,
            "cosine_min": _number(self.cosine_min),
            "cosine_mean": _number(self.cosine_mean),
            "max_abs": _number(self.max_abs),
            "reference_max_abs": _number(self.reference_max_abs),
            "max_abs_rel": _number(self.max_abs_rel),
            "cosine_histogram": self.cosine_histogram,
        }
        if self.mismatch is not None:
            out["mismatch"] = self.mismatch
        return out

    def __str__(self) -> str:
        if self.mismatch is not None:
            return f"{self.name}: shape mismatch ({self.mismatch})"
        t = self.thresholds
        parts = []
        if t.cosine_mean is not None:
            parts.append(f"cosine mean {self.cosine_mean:.5f} (>= {t.cosine_mean})")
        parts.append(
            f"cosine min {self.cosine_min:.7f}" + ("" if t.cosine_min is None else f" (>= {t.cosine_min})")
        )
        if t.max_abs_rel is not None:
            parts.append(f"max abs rel {self.max_abs_rel:.2e} (<= {t.max_abs_rel:g})")
        return f"{self.name}: {', '.join(parts)} {'ok' if self.passed else 'FAILED'}"


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def compare_tokens(
    reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], name: str, thresholds: Thresholds
) -> OutputParity:
    """Compare per-frame (tokens, hidden) arrays; every frame must have the reference's shape."""
    ref_shapes = [tuple(np.shape(r)) for r in reference]
    cand_shapes = [tuple(np.shape(c)) for c in candidate]
    if ref_shapes != cand_shapes:
        return OutputParity(
            name, thresholds, mismatch=f"reference per-frame shapes {ref_shapes}, candidate {cand_shapes}"
        )
    ref = np.concatenate([np.asarray(r, np.float64).reshape(-1, r.shape[-1]) for r in reference])
    cand = np.concatenate([np.asarray(c, np.float64).reshape(-1, c.shape[-1]) for c in candidate])
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    dots = np.einsum("ij,ij->i", ref, cand)
    both_zero = (norms == 0) & ~np.any(ref - cand, axis=1)
    cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, 0.0))
    return OutputParity(
        name,
        thresholds,
        tokens=len(ref),
        cosine_min=float(cosine.min()),
        cosine_mean=float(cosine.mean()),
        max_abs=float(np.abs(ref - cand).max()),
        reference_max_abs=float(np.abs(ref).max()),
        cosine_counts=tuple(
            int(c)
            for c in np.bincount(
                np.searchsorted(COSINE_BINS, cosine, side="right"), minlength=len(COSINE_BINS) + 1
            )
        ),
    )


def combine(name: str, parts: Sequence[OutputParity]) -> OutputParity:
    """Overall numbers of several outputs: worst cosine, largest difference over largest reference."""
    if not parts:
        raise ValueError("nothing to combine")
    thresholds = parts[0].thresholds
    mismatched = [p.name for p in parts if p.mismatch is not None]
    if mismatched:
        return OutputParity(name, thresholds, mismatch=f"shape mismatch in {', '.join(mismatched)}")
    tokens = sum(p.tokens for p in parts)
    return OutputParity(
        name,
        thresholds,
        tokens=tokens,
        cosine_min=min(p.cosine_min for p in parts),
        cosine_mean=sum(p.cosine_mean * p.tokens for p in parts) / tokens,
        max_abs=max(p.max_abs for p in parts),
        reference_max_abs=max(p.reference_max_abs for p in parts),
        cosine_counts=tuple(int(c) for c in np.sum([p.cosine_counts for p in parts], axis=0)),
    )
