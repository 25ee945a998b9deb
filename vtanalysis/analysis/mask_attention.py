"""How much of the last prompt token's image attention falls on the queried object.

For sample s at layer l, with a_j the last-row attention over image tokens (renormalised to sum
1 over the image tokens) and f_j the fraction of token j's cell inside the object mask:

    mass_l(s) = sum_j a_j f_j          area(s) = mean_j f_j

`attention_in_mask` reports mean_s mass_l(s), mean_s area(s) and their ratio per layer: 1 is what
attention spread uniformly over the image would give; 2 means twice the area-predicted share.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..collect.record import record_attention
from ..models.images import load_image


def mask_on_grid(mask: np.ndarray, extent: tuple[float, float, float, float], shape: tuple[int, int]) -> torch.Tensor:
    """Fraction of each grid cell inside `mask` [H, W] (bool), for a grid covering `extent`
    (x0, y0, x1, y1 as fractions of the image) with `shape` (h, w) cells. Returns [h, w]."""
    H, W = mask.shape
    x0, y0, x1, y1 = extent
    crop = torch.as_tensor(mask[round(y0 * H):round(y1 * H), round(x0 * W):round(x1 * W)], dtype=torch.float32)
    return F.interpolate(crop[None, None], size=shape, mode="area")[0, 0]


def token_fractions(vlm, layout, mask: np.ndarray) -> torch.Tensor:
    """[n_image_tokens] mask fraction per image-token column (0 for tokens outside every grid)."""
    frac = torch.zeros(layout.n_image_tokens)
    size = (mask.shape[1], mask.shape[0])
    for grid in layout.grids:
        extent = vlm.adapter.grid_extent(vlm.processor, grid, size)
        frac[grid.columns] = mask_on_grid(mask, extent, grid.shape).flatten()
    return frac


def attention_in_mask(vlm, samples, masks: list[np.ndarray], *, batch_size: int = 16, progress: bool = True) -> dict:
    """Per-layer attention mass on the target masks vs their area (samples with an empty mask are skipped).

    Args:
        samples: `Sample`s (image, question); masks: one [H, W] bool mask per sample, in image pixels.
    Returns:
        {"layers": [...], "mass": [L], "area": float, "ratio": [L], "n": samples used}.
    """
    from tqdm.auto import tqdm

    keep = [(s, m) for s, m in zip(samples, masks) if m.any()]
    mass, area = None, []
    for i in tqdm(range(0, len(keep), batch_size), desc="attention in mask", disable=not progress):
        chunk = keep[i:i + batch_size]
        batch = vlm.prepare([load_image(s.image) for s, _ in chunk], [s.question for s, _ in chunk])
        rec = record_attention(vlm, batch)
        for b, (_, m) in enumerate(chunk):
            frac = token_fractions(vlm, batch.layouts[b], m)
            rows = rec[b].last_row.float()  # [L, n_image]
            rows = rows / rows.sum(-1, keepdim=True)
            part = rows @ frac
            mass = part if mass is None else mass + part
            area.append(float(frac.mean()))
        layers = rec.layers
    n = len(area)
    mean_mass = (mass / n).tolist()
    mean_area = sum(area) / n
    return {"layers": layers, "mass": mean_mass, "area": mean_area, "ratio": [x / mean_area for x in mean_mass],
            "n": n}
