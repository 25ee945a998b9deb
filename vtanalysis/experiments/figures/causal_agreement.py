"""How much of the causal oracle each method's selection recovers at keep 0.1 (arXiv 2502.11501 asks
pruning to beat random and to show what it keeps; the oracle is `causal.oracle`)."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ...analysis.stats import mean_interval
from ..causal import causal_result, oracle_share
from ..context import Context, save, write_json
from ..registry import figure


@figure()
def causal_agreement(ctx: Context) -> list[Path]:
    """Share of the oracle recovered, recall of the oracle's tokens and deletion / insertion curves, per method."""
    result = causal_result(ctx)
    agree = result["agreement"]
    methods = list(agree)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [1.3, 1, 1]})
    for ax, key, title in ((axes[0], "share", "share of the oracle recovered, ratio of means\n"
                                              "(1 = oracle, 0 = random; 95 % bootstrap interval)"),
                           (axes[1], "recall", "recall of the oracle's tokens\n(mean, 95 % interval)")):
        stats = [oracle_share(agree[m]) if key == "share" else mean_interval(agree[m][key]) for m in methods]
        mean = np.array([s[0] for s in stats])
        err = np.array([[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]])
        ax.barh(range(len(methods)), mean, xerr=np.nan_to_num(err, posinf=0), color="tab:blue", alpha=0.8, capsize=2)
        ax.set_yticks(range(len(methods)), methods, fontsize=8)
        ax.invert_yaxis()
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(title, fontsize=9)
    axes[0].axvline(1, color="crimson", ls="--", lw=0.8)
    budgets = result["budgets"]
    for m in methods:
        line, = axes[2].plot(budgets, np.mean(agree[m]["deletion"], axis=0), "-", lw=1.1, label=m)
        axes[2].plot(budgets, np.mean(agree[m]["insertion"], axis=0), ":", lw=1.1, color=line.get_color())
    axes[2].set_xlabel("share of image tokens in the method's selection")
    axes[2].set_ylabel("mean KL, next token")
    axes[2].set_title("solid: drop the selection (deletion), dotted: keep only it (insertion)", fontsize=9)
    axes[2].legend(fontsize=6, ncol=2)
    fig.suptitle(f"{ctx.vlm.name}: agreement with the causal oracle at keep {result['keep']}, "
                 f"n = {result['oracle_samples']} samples (oracle: greedy forward selection on the KL, "
                 f"{result['oracle_step']} tokens per round; random: {result['seeds']} seeds)", fontsize=10, y=1.04)
    if result.get("excluded"):
        fig.text(0.01, -0.02, "not compared (another budget): " + "; ".join(f"{m} {why}" for m, why in
                                                                         result["excluded"].items()), fontsize=7)
    paths = save(fig, ctx.out, "causal_agreement")
    paths.append(write_json(ctx.out / "causal_agreement.json", {k: result.get(k) for k in ("keep", "oracle_samples", "seeds",
                                                                                           "budgets", "agreement",
                                                                                           "excluded")}))
    return paths
