"""Attention knockout by layer window (arXiv 2411.18620): where does the image reach the answer?"""
from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from ..causal import causal_result
from ..context import Context, save, write_json
from ..registry import figure


@figure()
def causal_knockout(ctx: Context) -> list[Path]:
    """Effect on the answer of blocking attention edges in a sliding window of layers (edge set x window start)."""
    result = causal_result(ctx)
    knock = result["knockout"]
    edges, starts, k = list(knock["effect"]), knock["starts"], knock["window"]
    # [edges, starts]: mean over the samples the edge applies to (the object edge: those with a mask)
    grid = np.array([np.mean([r for r in knock["effect"][e] if r is not None], axis=0) for e in edges])
    counts = [sum(r is not None for r in knock["effect"][e]) for e in edges]
    fig, ax = plt.subplots(figsize=(1.6 + 0.55 * len(starts), 1.4 + 0.45 * len(edges)))
    # a square-root-like scale: one large cell (question -> last early) must not flatten the rest
    im = ax.imshow(grid, cmap="viridis", aspect="auto", norm=matplotlib.colors.PowerNorm(0.4, vmin=0))
    for i in range(len(edges)):
        for j in range(len(starts)):
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if grid[i, j] ** 0.4 < grid.max() ** 0.4 / 2 else "black")
    ax.set_yticks(range(len(edges)), [e.replace("->", " → ") + ("" if c == result["samples"] else f" (n = {c})")
                                      for e, c in zip(edges, counts)], fontsize=8)
    ax.set_xticks(range(len(starts)), [f"{s}-{s + k - 1}" if k > 1 else str(s) for s in starts], fontsize=8)
    ax.set_xlabel(f"knocked-out layers (window of {k})")
    fig.colorbar(im, ax=ax, label="mean KL, next token (power scale)")
    ax.set_title(f"{ctx.vlm.name}: attention knockout, n = {result['samples']} samples\n"
                 "A → B: B's queries may not attend to A's keys in those layers only;\n"
                 "object: the queried object's tokens (ground-truth mask)", fontsize=9)
    paths = save(fig, ctx.out, "causal_knockout")
    paths.append(write_json(ctx.out / "causal_knockout.json", {"samples": result["samples"], **knock}))
    return paths
