"""ROC AUC of each token score against the queried object's tokens (AdaFV Fig. 2, 8)."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ..context import Context, save, write_csv
from ..registry import figure
from ..statistics import scored_rows, scores


@figure(statistics=scores)
def saliency_auc(ctx: Context) -> list[Path]:
    """AUC of each token score (attention, [CLS], T2I) against the queried object's mask, per sample and question type."""
    rows = scored_rows(ctx)
    rules = [k[:-len("/auc")] for k in rows[0] if k.endswith("/auc")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [1, 1.4]})
    data = [[r[f"{rule}/auc"] for r in rows] for rule in rules]
    axes[0].boxplot(data, showmeans=True)
    axes[0].set_xticks(range(1, len(rules) + 1), rules)
    axes[0].axhline(0.5, color="grey", ls=":", lw=1)
    axes[0].set_ylabel("ROC AUC vs the queried object's tokens")
    axes[0].set_title(f"AUC per sample (n={len(rows)}; 0.5 = chance)", fontsize=10)
    types = sorted({r["type"] for r in rows})
    width = 0.8 / len(rules)
    for i, rule in enumerate(rules):
        means = [np.nanmean([r[f"{rule}/auc"] for r in rows if r["type"] == t]) for t in types]
        axes[1].bar(np.arange(len(types)) + i * width, means, width, label=rule)
    axes[1].set_xticks(np.arange(len(types)) + 0.4 - width / 2, types)
    axes[1].axhline(0.5, color="grey", ls=":", lw=1)
    axes[1].set_ylabel("mean AUC")
    axes[1].set_title("Mean AUC per question type", fontsize=10)
    axes[1].legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)  # below: off the bars
    fig.suptitle(f"{ctx.vlm.name}: token scores against ground-truth object masks (50% patch rule)", fontsize=10)
    paths = save(fig, ctx.out, "saliency_auc")
    flat = [{k: v for k, v in r.items() if k != "scores"} for r in rows]
    paths.append(write_csv(ctx.out / "saliency_auc.csv", flat))
    return paths
