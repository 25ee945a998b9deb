"""The `uniform` and `pool` baselines' lattice (the method docstrings: `vtanalysis.prune.methods.baselines`).

Per grid of h x w tokens keeping k of them: an r x c lattice with r / c close to h / w and r c >= k;
lattice point (i, j) sits at row floor((i + 1/2) h / r), column floor((j + 1/2) w / c), and k of the
r c points are taken at even strides in row-major order. `pool_blocks` gives each taken point the
mean over its adaptive-pooling block (rows floor(i h / r) to ceil((i + 1) h / r)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def lattice_shape(h: int, w: int, k: int) -> tuple[int, int]:
    r = min(h, max(1, round((k * h / w) ** 0.5)))
    c = min(w, -(-k // r))
    return max(r, -(-k // c)), c


def lattice(h: int, w: int, k: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(k row-major indices into the h x w grid, their indices among the r x c lattice points).
    Host integers in, device tensors out: no round trip."""
    k = min(k, h * w)
    if k == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    r, c = lattice_shape(h, w, k)
    rows = ((torch.arange(r, device=device) + 0.5) * h / r).long()
    cols = ((torch.arange(c, device=device) + 0.5) * w / c).long()
    taken = (torch.arange(k, device=device) * (r * c)) // k
    return (rows[:, None] * w + cols[None, :]).flatten()[taken], taken


def grid_counts(sizes: list[int], budget: int) -> list[int]:
    """`budget` split over grids of `sizes` tokens in proportion (largest remainders first)."""
    shares = [budget * n / sum(sizes) for n in sizes]
    counts = [int(x) for x in shares]
    for g in sorted(range(len(sizes)), key=lambda g: counts[g] - shares[g])[: budget - sum(counts)]:
        counts[g] += 1
    return counts


def pool_blocks(values: torch.Tensor, h: int, w: int, k: int, taken: torch.Tensor) -> torch.Tensor:
    """values [h w, D] of one grid (row-major) -> [k, D]: the means of the lattice blocks taken."""
    blocks = F.adaptive_avg_pool2d(values.T.reshape(1, -1, h, w).float(), lattice_shape(h, w, k))
    return blocks.flatten(2)[0].T[taken]
