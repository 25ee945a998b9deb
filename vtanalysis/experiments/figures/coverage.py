"""Tokens kept until the first / every token of the queried object is in (AdaFV Fig. 4)."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ..context import Context, save, write_json
from ..registry import figure
from ..statistics import scored_rows, scores


@figure(statistics=scores)
def coverage(ctx: Context) -> list[Path]:
    """Share of samples whose queried object is (first, fully) kept against the tokens kept, per score."""
    rows = scored_rows(ctx)
    rules = [k[:-len("/auc")] for k in rows[0] if k.endswith("/auc")]
    n_image = max(r["n_image_tokens"] for r in rows)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    summary = {}
    for ax, stat, title in zip(axes, ("first_relevant", "tokens_to_cover"),
                               ("first relevant token included", "every relevant token included")):
        for rule in rules:
            v = np.sort([r[f"{rule}/{stat}"] for r in rows])
            ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=f"{rule} (median {np.median(v):.0f})")
            summary[f"{rule}/{stat}"] = {"median": float(np.median(v)), "mean": float(v.mean())}
        ax.set_xlabel(f"image tokens kept (of {n_image})")
        ax.set_ylabel("share of samples")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"{ctx.vlm.name}: tokens needed before the queried object is kept (AdaFV Fig. 4)", fontsize=10)
    paths = save(fig, ctx.out, "coverage")
    paths.append(write_json(ctx.out / "coverage.json", summary))
    return paths
