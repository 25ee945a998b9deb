"""Mean text-to-image attention folded onto patch grids, one panel per layer."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

ROW_NAMES = ("last prompt token", "mean over text queries")


def pick_layers(layers: list[int], most: int = 8) -> list[int]:
    """Up to `most` evenly spaced indices into `layers` (first and last always included)."""
    if len(layers) <= most:
        return list(range(len(layers)))
    return sorted({int(round(i)) for i in np.linspace(0, len(layers) - 1, most)})


def plot_mean_maps(means: dict, layers: list[int], *, title: str, path: str | Path, most_layers: int = 8) -> Path:
    """One figure per run: for each grid kind, two rows (last token, mean text rows) x chosen layers.

    Args:
        means: grid key -> [2, n_layers, h, w] mean attention (as from `MeanMaps.means`).
        layers: model layer index of each entry of the layer dimension.
    Each panel has its own colour scale (attention magnitudes differ by orders across layers).
    """
    keys = [k for k in means if k != "image_mass"]
    cols = pick_layers(layers, most_layers)
    fig, axes = plt.subplots(2 * len(keys), len(cols), figsize=(2.2 * len(cols) + 1, 2.3 * 2 * len(keys)),
                             squeeze=False)
    for g, key in enumerate(keys):
        maps = means[key].numpy()
        for r in range(2):
            for c, li in enumerate(cols):
                ax = axes[2 * g + r, c]
                im = ax.imshow(maps[r, li], cmap="viridis")
                ax.set_xticks([])
                ax.set_yticks([])
                if 2 * g + r == 0:
                    ax.set_title(f"layer {layers[li]}", fontsize=9)
                if c == 0:
                    ax.set_ylabel(f"{key}\n{ROW_NAMES[r]}", fontsize=8)
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
