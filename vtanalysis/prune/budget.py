"""Turning a `keep` argument (ratio or count) into a token count, with clear errors."""
from __future__ import annotations

from ..errors import VTAError


def keep_count(keep: float | int, n: int) -> int:
    """Tokens to keep out of `n`.

    Args:
        keep: a ratio in (0, 1] (float) or a count in [1, n] (int).
        n: tokens available.
    Returns:
        int(n * keep) for a ratio (at least 1), or the count itself.
    """
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise VTAError(f"keep must be a ratio in (0, 1] or a token count, not {keep!r}.")
    if isinstance(keep, float):
        if not 0.0 < keep <= 1.0:
            raise VTAError(f"keep ratio {keep} is outside (0, 1]; pass e.g. keep=0.25, or an integer token count.")
        return max(1, int(n * keep))
    if keep <= 0:
        raise VTAError(f"keep must be positive, got {keep}.")
    if keep > n:
        raise VTAError(f"keep={keep} tokens is larger than the image ({n} image tokens); pass at most {n} "
                       "or a ratio in (0, 1].")
    return keep
