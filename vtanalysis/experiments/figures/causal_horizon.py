"""The information horizon (arXiv 2512.07580): the effect of keeping only a method's selection from
layer l on, per layer, beside random selections of the same size."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from ...analysis.stats import mean_interval
from ..causal import causal_result
from ..context import Context, save, write_json
from ..registry import figure


@figure()
def causal_horizon(ctx: Context) -> list[Path]:
    """Effect on the answer of keeping only each method's selection (keep 0.1) from layer l on, against random."""
    result = causal_result(ctx)
    layers = result["layers"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ax.set_prop_cycle(color=plt.cm.tab10.colors)
    randoms = []
    for method, h in result["horizon"].items():
        effect = np.asarray(h["effect"])
        stats = [mean_interval(effect[:, l]) for l in layers]
        mean = [s[0] for s in stats]
        line, = ax.plot(layers, mean, "o-", ms=3, lw=1.3,
                        label=f"{method} (horizon: {'none' if h['horizon'] is None else 'layer ' + str(h['horizon'])})")
        ax.fill_between(layers, [s[1] for s in stats], [s[2] for s in stats], color=line.get_color(), alpha=0.12)
        randoms.append(np.asarray(h["random"]))
    rand = np.concatenate(randoms)  # every method's random draws: same budget, same samples
    stats = [mean_interval(rand[:, l]) for l in layers]
    ax.plot(layers, [s[0] for s in stats], "s--", color="grey", ms=3, label=f"random ({result['seeds']} seeds per sample)")
    ax.fill_between(layers, [s[1] for s in stats], [s[2] for s in stats], color="grey", alpha=0.15)
    ax.set_xlabel("first layer without the tokens not kept (0 = they never enter the LLM)")
    ax.set_ylabel("KL(unablated || pruned), next token\n(mean, 95 % interval)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend(fontsize=7)
    ax.set_title(f"{ctx.vlm.name}: information horizon at keep {result['keep']}, n = {result['samples']} samples\n"
                 f"horizon: first layer from which a method stays within {result['margin']:.0%} of random's effect",
                 fontsize=9)
    paths = save(fig, ctx.out, "causal_horizon")
    paths.append(write_json(ctx.out / "causal_horizon.json", {k: result[k] for k in ("keep", "samples", "seeds",
                                                                                     "layers", "margin", "horizon")}))
    return paths
