"""Accuracy against compute and keep, per method, with the AdaptPrune Table 4 ablations dotted and
the random, uniform and pool baselines dashed (AdaptPrune Fig. 5; AdaFV Tab. 3-5)."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from ..context import ABLATIONS, BASELINES, KEEPS, METHODS, SEEDS, Context, save, write_csv
from ..registry import figure
from ..statistics import accuracy_rows


@figure(statistics=accuracy_rows)
def accuracy_vs_keep(ctx: Context, methods=METHODS + ABLATIONS, keeps=KEEPS) -> list[Path]:
    """Accuracy (95 % Wilson intervals) against the measured FLOPs ratio and against keep, per method."""
    rows = accuracy_rows(ctx, methods, keeps)
    base = rows[0]
    fig, axes = plt.subplots(1, 2, figsize=(14.5, 4.4))
    # distinct hues (tab20's pairs put two methods in two shades of one colour); baselines keep their own
    palette = [plt.cm.tab10.colors[i] for i in (0, 1, 2, 3, 4, 6, 8, 9)] + ["navy", "olive", "teal", "crimson"]
    fixed = {"random": "grey", "uniform": "black", "pool": "saddlebrown"}
    others = iter(palette)
    for m in dict.fromkeys(r["method"] for r in rows[1:]):
        mine = [r for r in rows if r["method"] == m]
        style = dict(ls=":" if m in ABLATIONS else "--" if m in BASELINES else "-",
                     color=fixed.get(m) or next(others, None), marker="s" if m in BASELINES else "o", ms=4)
        acc = np.array([r["accuracy"] for r in mine])
        err = np.clip([acc - [r["acc_low"] for r in mine], [r["acc_high"] for r in mine] - acc], 0, None)  # rounding at p = 0, 1
        label = m + (f" (mean of {len(SEEDS)} seeds)" if "seeds" in mine[0] else "") + (" [baseline]" if m in BASELINES else "")
        axes[0].errorbar([r["flops_ratio"] for r in mine], acc, yerr=err, capsize=2, lw=1.2, label=label, **style)
        axes[1].errorbar([r["keep"] for r in mine], acc, yerr=err, capsize=2, lw=1.2, label=label, **style)
    for ax in axes:
        ax.axhline(base["accuracy"], color="black", ls="--", lw=1, label=f"unpruned ({base['accuracy']:.3f})")
        ax.set_ylabel("exact-match accuracy (95 % Wilson interval)")
    axes[0].set_xlabel("measured prefill FLOPs / unpruned (along each line, right to left: keep "
                       + ", ".join(f"{k:g}" for k in sorted(keeps, reverse=True)) + ")")
    axes[0].set_title("accuracy at equal compute", fontsize=10)
    axes[1].set_xscale("log")
    axes[1].set_xticks(keeps, [f"{k:g}" for k in keeps])
    axes[1].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # only the keep ratios are labelled
    axes[1].set_xlabel("share of image tokens kept")
    axes[1].set_title("accuracy at equal keep", fontsize=10)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))  # beside the axes: no point hidden
    fig.suptitle(f"{ctx.vlm.name}: accuracy vs compute, n = {len(ctx.samples)} held-out samples per point", fontsize=10)
    paths = save(fig, ctx.out, "accuracy_vs_keep")
    paths.append(write_csv(ctx.out / "accuracy_vs_keep.csv", [{k: v for k, v in r.items() if k != "hits"} for r in rows]))
    return paths
