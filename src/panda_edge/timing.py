"""Bench arithmetic that holds on any CPU: ratios and rates from unrounded times, never a division by
a time the clock could not resolve.

A fast CPU can finish a tiny GEMM in less time than the report's rounding keeps (0.04 ms shows as
0.0) or, on a coarse clock, in less than one tick. Every ratio and rate is therefore computed from
the raw seconds, and one whose time is at or below the timer's resolution is reported as None with
the reason, so a report never holds a NaN, an infinity, or a ZeroDivisionError's traceback.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence

RESOLUTION_S = time.get_clock_info("perf_counter").resolution
BELOW_RESOLUTION = (
    f"a time at or below the timer's resolution ({RESOLUTION_S * 1e9:g} ns) was measured: "
    "too short to divide by"
)
SIGNIFICANT_DIGITS = 4


def significant(value: float, digits: int | None = SIGNIFICANT_DIGITS) -> float:
    """`value` rounded to `digits` significant digits (None: unrounded, for further arithmetic): a
    positive time never rounds to 0."""
    if digits is None or value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def measurable(seconds: float | None) -> bool:
    """Whether a time can be divided by: finite and above the timer's resolution."""
    return seconds is not None and math.isfinite(seconds) and seconds > RESOLUTION_S


def median_s(runs_s: Sequence[float]) -> float | None:
    """The median of `runs_s` in seconds; None when there are no runs."""
    return statistics.median(runs_s) if runs_s else None


def time_ratio(
    slow_s: float | None, fast_s: float | None, digits: int | None = SIGNIFICANT_DIGITS
) -> float | None:
    """slow / fast (above 1: the second is faster), or None when either time is not measurable."""
    if not (measurable(slow_s) and measurable(fast_s)):
        return None
    return significant(slow_s / fast_s, digits)


def rate(amount: float, seconds: float | None, digits: int | None = SIGNIFICANT_DIGITS) -> float | None:
    """`amount` per second (tokens/s, bytes/s, FLOP/s), or None when `seconds` is not measurable."""
    if not measurable(seconds):
        return None
    return significant(amount / seconds, digits)


def quotient(
    numerator: float | None, denominator: float | None, digits: int | None = SIGNIFICANT_DIGITS
) -> float | None:
    """numerator / denominator of derived numbers (rates, bounds), or None when either is missing,
    not finite, or the denominator is not positive."""
    if numerator is None or denominator is None or not math.isfinite(numerator):
        return None
    if not math.isfinite(denominator) or denominator <= 0:
        return None
    return significant(numerator / denominator, digits)
