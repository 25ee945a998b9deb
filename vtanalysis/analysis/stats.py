"""95 % intervals for the figures and the findings table, and the verdict rule of a claim.

    wilson(k, n)        Wilson score interval of a proportion k / n:
                        (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), z = 1.96
    paired(a, b)        mean of the per-sample differences d_i = a_i - b_i (both runs answered the
                        same samples) +- z sd(d) / sqrt(n): pairing removes the between-sample
                        variance two independent intervals would carry
    mean_interval(x)    mean +- z sd / sqrt(n), NaNs dropped
    verdict(iv, ...)    "reproduced" / "refuted" / "inconclusive" from a difference's interval
"""
from __future__ import annotations

import math

import numpy as np

Z = 1.959963984540054  # ok-literal: the 97.5 % normal quantile


def wilson(k: float, n: int) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return (centre - half, centre + half)


def mean_interval(values) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of the finite values."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return (math.nan, math.nan, math.nan, 0)
    half = Z * x.std(ddof=1) / math.sqrt(x.size) if x.size > 1 else math.inf
    return (float(x.mean()), float(x.mean() - half), float(x.mean() + half), int(x.size))


def paired(a, b) -> tuple[float, float, float, int]:
    """(mean difference, low, high, n) of a_i - b_i over the same samples."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired runs must answer the same samples: {a.shape} vs {b.shape}.")
    return mean_interval(a - b)


def verdict(low: float, high: float, *, at_least: bool = False, margin: float = 0.02) -> str:
    """A claim "A > B" (or "A >= B" with `at_least`) from the interval of A - B.

    "A > B": reproduced when the whole interval is above 0, refuted when it is below 0.
    "A >= B": reproduced when the interval excludes a deficit larger than `margin` (low > -margin,
    non-inferiority), refuted when the whole interval is below 0. Anything else is inconclusive.
    """
    if not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive"
    if high < 0:
        return "refuted"
    if low > (-margin if at_least else 0.0):
        return "reproduced"
    return "inconclusive"
