"""Text-to-image similarity of the LLM input embeddings: cosine vs inner product (AdaFV Fig. 3)."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ..context import Context, save, write_json
from ..registry import figure
from ..statistics import scored_rows, scores


@figure(statistics=scores)
def t2i_similarity(ctx: Context) -> list[Path]:
    """Distribution of normalised cosine vs normalised inner-product T2I scores over all image tokens."""
    rows = scored_rows(ctx)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"wspace": 0.3})  # the two x labels apart
    summary = {}
    for ax, rule, label in zip(axes, ("t2i-cosine", "t2i-inner"), ("normalised cosine", "normalised inner product")):
        values = np.concatenate([np.asarray(r["scores"][rule]) for r in rows])
        ax.hist(values, bins=60, color="steelblue")
        ax.set_yscale("log")
        ax.set_xlabel(f"{label}:\nmax over text tokens of softmax over image tokens", fontsize=9)
        ax.set_ylabel("image tokens (log)")
        ax.set_title(f"{label}: max {values.max():.3f}, 99th pct {np.percentile(values, 99):.4f}", fontsize=10)
        summary[rule] = {"max": float(values.max()), "p99": float(np.percentile(values, 99)),
                         "median": float(np.median(values)), "n_tokens": int(values.size)}
    fig.suptitle(f"{ctx.vlm.name}: text-to-image similarity of the LLM input embeddings (AdaFV Fig. 3)", fontsize=10)
    paths = save(fig, ctx.out, "t2i_similarity")
    paths.append(write_json(ctx.out / "t2i_similarity.json", summary))
    return paths
