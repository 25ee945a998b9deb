"""What `keep` means, for every method, and turning it into token counts.

`keep` is a ratio in (0, 1] of a sample's image tokens or a token count in [1, n]; it is the
budget that the method's own tables use:
- single-stage methods (FastV, AdaptPrune, the Table 5 alternatives, FitPrune and the pre-LLM
  methods): the image tokens kept after the pruning point;
- multi-stage methods (AdaptInfer, PyramidDrop, SparseVLM, VTW): the image-token count averaged
  over the decoder layers (`average_tokens`).
keep = 1.0 (or n) is the unpruned model for every method: no stage runs at all.
"""
from __future__ import annotations

from ..errors import VTAError
from ..rules import budget as rules_budget


def keep_count(keep: float | int, n: int, rounding: str = "floor") -> int:
    """Tokens to keep out of `n`: `vtanalysis.rules.budget.keep_count` (keep a ratio in (0, 1] or a
    count in [1, n]; rounding "floor" or "round", the method's authors'), whose errors become
    `VTAError` here."""
    try:
        return rules_budget.keep_count(keep, n, rounding)
    except rules_budget.KeepError as e:
        raise VTAError(str(e)) from None


def keeps_everything(keep: float | int, n: int) -> bool:
    """True when `keep` (validated) asks for every one of the n image tokens: the unpruned model."""
    return keep_count(keep, n) == n


def average_tokens(n: int, stages: list[tuple[int, int]], depth: int) -> float:
    """Image tokens averaged over the decoder layers: layers before the first stage see n, layers
    from stage s's layer on see its count. stages: [(first layer seeing the kept set, count)]."""
    total, current, previous = 0, n, 0
    for layer, count in stages:
        total += current * (layer - previous)
        current, previous = count, layer
    return (total + current * (depth - previous)) / depth


def bisect_increasing(value, target: float, lo: float, hi: float, steps: int = 60) -> tuple[float, float]:
    """(lo, hi) around the x in [lo, hi] where the non-decreasing `value(x)` reaches `target`."""
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if value(mid) < target else (lo, mid)
    return lo, hi


def scale_to_average(shape: list[float], budget: float, n: int, average) -> list[int]:
    """Per-stage counts min(n, round(c * s)) for the scale s whose `average(counts)` is closest to
    `budget` (the average grows with s). shape: the schedule's relative counts."""
    def counts(scale):
        return [min(n, int(round(c * scale))) for c in shape]

    top = n / max(min(c for c in shape if c > 0), 1e-12)  # at this scale every stage keeps all n
    lo, hi = bisect_increasing(lambda scale: average(counts(scale)), budget, 0.0, top)
    return min((counts(lo), counts(hi)), key=lambda c: abs(average(c) - budget))


def table_counts(tables: dict, table_tokens: int, budget: float, n: int, depth: int, average) -> list[int]:
    """Per-stage counts from an author's per-budget tables ({budget: counts}, made for `table_tokens`
    image tokens and 32 layers): the table itself when the budget is a published one on that
    geometry, else the table nearest in share scaled until `average(counts)` equals the budget."""
    if n == table_tokens and budget in tables and depth == 32:
        return list(tables[int(budget)])
    nearest = min(tables, key=lambda p: abs(p / table_tokens - budget / n))
    return scale_to_average(tables[nearest], budget, n, average)
