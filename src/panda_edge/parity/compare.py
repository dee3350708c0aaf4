"""One comparison for any two engines' per-frame token lists (numpy only, no torch).

Numbers follow DESIGN.md §5: cosine per token (the minimum is reported) and the largest absolute
difference relative to the reference's largest absolute value. A different token count is a shape
mismatch: always a failure, reported with the counts rather than numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Thresholds:
    cosine_min: float
    max_abs_rel: float


# Pass thresholds per parity level (DESIGN.md §5).
LEVELS: dict[str, Thresholds] = {
    "stab_fp32": Thresholds(cosine_min=0.99999, max_abs_rel=1e-3),
}


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

    @property
    def max_abs_rel(self) -> float:
        if self.mismatch is not None:
            return math.nan
        return self.max_abs / self.reference_max_abs if self.reference_max_abs > 0 else self.max_abs

    @property
    def passed(self) -> bool:
        return (
            self.mismatch is None
            and self.cosine_min >= self.thresholds.cosine_min
            and self.max_abs_rel <= self.thresholds.max_abs_rel
        )

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
        }
        if self.mismatch is not None:
            out["mismatch"] = self.mismatch
        return out

    def __str__(self) -> str:
        if self.mismatch is not None:
            return f"{self.name}: shape mismatch ({self.mismatch})"
        verdict = "ok" if self.passed else "FAILED"
        return (
            f"{self.name}: cosine min {self.cosine_min:.7f} (>= {self.thresholds.cosine_min}), "
            f"max abs rel {self.max_abs_rel:.2e} (<= {self.thresholds.max_abs_rel:g}) {verdict}"
        )


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
    )
