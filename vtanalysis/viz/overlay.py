"""Retained-token overlays: the image with kept patches shown and dropped ones dimmed."""
from __future__ import annotations

import matplotlib.patches as mpatches
import matplotlib.pyplot as plt
import numpy as np


def kept_mask(grid, kept_columns) -> np.ndarray:
    """Boolean [h, w] map of a grid's kept cells from kept layout columns."""
    mask = np.zeros(grid.shape, dtype=bool)
    for c in np.asarray(kept_columns).tolist():
        if grid.start <= c < grid.stop:
            mask[divmod(c - grid.start, grid.shape[1])] = True
    return mask


def draw_overlay(ax, image, grid, kept_columns, extent=(0.0, 0.0, 1.0, 1.0), *, dim: float = 0.7, title: str = ""):
    """Draw `image` (PIL) on `ax` with the grid's dropped cells darkened by `dim` and kept cells outlined.

    extent: the fractions (x0, y0, x1, y1) of the image the grid covers (see `Adapter.grid_extent`).
    """
    arr = np.asarray(image.convert("RGB"))
    H, W = arr.shape[:2]
    ax.imshow(arr)
    x0, y0, x1, y1 = extent[0] * W, extent[1] * H, extent[2] * W, extent[3] * H
    gh, gw = grid.shape
    cw, ch = (x1 - x0) / gw, (y1 - y0) / gh
    mask = kept_mask(grid, kept_columns)
    shade = np.zeros((gh, gw, 4))
    shade[..., 3] = np.where(mask, 0.0, dim)
    ax.imshow(shade, extent=(x0, x1, y1, y0), interpolation="nearest")
    for r, c in zip(*np.nonzero(mask)):
        ax.add_patch(mpatches.Rectangle((x0 + c * cw, y0 + r * ch), cw, ch, fill=False, lw=0.6, ec="yellow"))
    if (x0, y0, x1, y1) != (0, 0, W, H):
        ax.add_patch(mpatches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.0, ec="white", ls="--"))
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"{grid.name} {gh}x{gw}: kept {int(mask.sum())}/{gh * gw}", fontsize=9)


def overlay_figure(vlm, image, layout, kept_columns, *, title: str):
    """One panel per grid of the sample's first image (LLaVA-NeXT: base and tiles)."""
    grids = [g for g in layout.grids if g.image == 0]
    fig, axes = plt.subplots(1, len(grids), figsize=(4.2 * len(grids), 4.6), squeeze=False)
    for ax, grid in zip(axes[0], grids):
        extent = vlm.adapter.grid_extent(vlm.processor, grid, image.size)
        draw_overlay(ax, image, grid, kept_columns, extent)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def draw_heat(ax, image, grid, values, extent=(0.0, 0.0, 1.0, 1.0), *, kept_columns=None, vmax=None, title: str = ""):
    """Draw `image` with a grid's per-token `values` (all of a sample's image-token columns, e.g. causal
    importance) as a translucent heat map over it; `kept_columns` outlined when given (a method's kept tokens).
    Opacity grows with the value, so tokens that do not matter leave the image visible.
    Returns a mappable for a colour bar."""
    arr = np.asarray(image.convert("RGB"))
    H, W = arr.shape[:2]
    ax.imshow(arr)
    x0, y0, x1, y1 = extent[0] * W, extent[1] * H, extent[2] * W, extent[3] * H
    heat = np.clip(np.asarray(values, dtype=float)[grid.start:grid.stop].reshape(grid.shape), 0, None)
    top = vmax if vmax is not None else max(float(np.nanmax(heat)), 1e-12)
    scaled = np.clip(heat / top, 0, 1)
    rgba = plt.get_cmap("inferno")(scaled)
    rgba[..., 3] = 0.85 * np.sqrt(scaled)  # unimportant tokens stay clear: the image shows through
    ax.imshow(rgba, extent=(x0, x1, y1, y0), interpolation="nearest")
    art = plt.cm.ScalarMappable(norm=plt.Normalize(0, top), cmap="inferno")
    if kept_columns is not None:
        gh, gw = grid.shape
        cw, ch = (x1 - x0) / gw, (y1 - y0) / gh
        for r, c in zip(*np.nonzero(kept_mask(grid, kept_columns))):
            ax.add_patch(mpatches.Rectangle((x0 + c * cw, y0 + r * ch), cw, ch, fill=False, lw=0.8, ec="cyan"))
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    return art
