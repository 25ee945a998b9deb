"""A `keep` ratio or count -> the token count a method keeps (`vtanalysis.prune.budget` documents
what `keep` means for every method; this is the arithmetic, shared with the vLLM plugin)."""
from __future__ import annotations

import math
from collections.abc import Callable

# A ratio times n is compared with this slack, so that keep=13/2880 gives 13, not 12.
EPSILON = 1e-9


class KeepError(ValueError):
    """`keep` is neither a ratio in (0, 1] nor a token count in [1, n]."""


def keep_count(keep: float | int, n: int, rounding: str = "floor") -> int:
    """Tokens to keep out of `n`.

    Args:
        keep: a ratio in (0, 1] (float) or a count in [1, n] (int).
        n: tokens available.
        rounding: how a ratio becomes a count, as the method's authors do it: "floor"
            (int(n * keep): AdaptPrune) or "round" (FastV's and FasterVLM's code); keep 0.1 of
            LLaVA-1.5's image tokens is 57 and 58 tokens. Both tolerate floating-point error (EPSILON).
    Returns:
        the count (at least 1).
    Raises:
        KeepError: `keep` is out of range or not a number.
    """
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise KeepError(f"keep must be a ratio in (0, 1] or a token count, not {keep!r}.")
    if isinstance(keep, float):
        if not 0.0 < keep <= 1.0:
            raise KeepError(f"keep ratio {keep} is outside (0, 1]; pass e.g. keep=0.25, or an integer token count.")
        if rounding == "round":
            return max(1, min(n, round(n * keep)))
        if rounding != "floor":
            raise ValueError(f"rounding must be 'floor' or 'round', not {rounding!r}.")
        return max(1, int(math.floor(n * keep + EPSILON)))
    if keep <= 0:
        raise KeepError(f"keep must be positive, got {keep}.")
    if keep > n:
        raise KeepError(f"keep={keep} tokens is larger than the image ({n} image tokens); pass at most {n} "
                        "or a ratio in (0, 1].")
    return keep


def crop_budgets(keep: float | int, full: list[int], available: list[int],
                 count: Callable[[float | int, int], int]) -> list[int]:
    """Tokens a pre-LLM method keeps of each crop (an image; a LLaVA-NeXT base image or tile), the
    authors' per-crop top-T: a ratio keeps `count(keep, full[c])` (the method's rounding of keep x the
    crop's full token count), a token count is split evenly over the crops; never more than the crop
    has (`available[c]`: LLaVA-NeXT's unpadding leaves tiles fewer).

    count: (keep, n) -> the method's count of n tokens for that keep."""
    share = keep if isinstance(keep, float) else max(1, keep // len(full))
    return [min(count(share if isinstance(share, float) else min(share, n), n), left) for n, left in zip(full, available)]
