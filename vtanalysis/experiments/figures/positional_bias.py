"""Positional bias: where the last token looks on the image grid, per task and layer (AdaptPrune Fig. 2, 8, 9)."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from ...analysis import positional_bias as pb
from ...viz.attention_maps import pick_layers
from ..context import Context, save, write_json
from ..registry import figure
from ..statistics import off_diagonal_mean, task_maps


@figure(statistics=task_maps)
def positional_bias(ctx: Context) -> list[Path]:
    """Mean last-token image attention per task and layer, and its similarity across tasks (AdaptPrune Fig. 2, 8, 9)."""

    per_type = ctx.per_type
    maps = task_maps(ctx)
    names, sim = pb.similarity_matrix(maps)
    layers = list(range(ctx.vlm.num_layers))
    cols = pick_layers(layers, 6)
    fig, axes = plt.subplots(len(names), len(cols), figsize=(2.1 * len(cols) + 1.2, 2.1 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        for c, li in enumerate(cols):
            ax = axes[r, c]
            im = ax.imshow(maps[name][li].numpy(), cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"layer {layers[li]}", fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    fig.suptitle(f"{ctx.vlm.name}: mean last-token attention on the image grid, per task (rows, n = {per_type} "
                 f"samples each) and layer\n"
                 f"mean pairwise correlation across tasks r = {off_diagonal_mean(sim):.2f}", fontsize=10)
    paths = save(fig, ctx.out, "positional_bias")
    fig, ax = plt.subplots(figsize=(1.0 * len(names) + 2.5, 0.9 * len(names) + 1.8))
    im = ax.imshow(sim.numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{float(sim[i, j]):.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="Pearson r, mean over layers")
    ax.set_title(f"Similarity of attention maps across tasks (n = {per_type} per task)", fontsize=10)
    paths += save(fig, ctx.out, "positional_bias_similarity")
    per_layer = {f"{a}|{b}": pb.map_correlation(maps[a], maps[b]).tolist() for i, a in enumerate(names) for b in names[:i]}
    paths.append(write_json(ctx.out / "positional_bias.json", {
        "tasks": names, "layers": layers, "samples_per_task": per_type, "similarity": sim.tolist(),
        "mean_cross_task_r": off_diagonal_mean(sim), "per_layer_r": per_layer,
        "maps": {n: m.tolist() for n, m in maps.items()}}))
    return paths
