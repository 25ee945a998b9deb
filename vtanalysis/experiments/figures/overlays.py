"""Retained-token overlays per method and keep ratio (AdaptPrune Fig. 1, 6, 7; AdaFV Fig. 7)."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from ...models.images import load_image
from ...prune.registry import get
from ...prune.run import run
from ...prune.vision import vision_refusal
from ...viz.overlay import draw_overlay
from ..context import KEEPS, METHODS, Context, save, write_json
from ..registry import figure


@figure()
def overlays(ctx: Context, methods=METHODS, keeps=KEEPS, n_images: int = 2) -> list[Path]:
    """The image tokens each method keeps at each keep ratio, drawn over the first images."""
    methods = [m for m in methods if vision_refusal(ctx.vlm, get(m).needs) is None]
    shown = ctx.samples[:n_images]
    batch = ctx.vlm.prepare([load_image(s.image) for s in shown], [s.question for s in shown])
    runs = {(m, k): run(ctx.vlm, batch, m, k, max_new_tokens=1) for m in methods for k in keeps}
    kept = {key: r.kept[-1] for key, r in runs.items()}  # the last stage's tokens: what the last layers see
    paths = []
    for i, s in enumerate(shown):
        image, lay = load_image(s.image), batch.layouts[i]
        grid = next(g for g in lay.grids if g.image == 0)
        extent = ctx.vlm.adapter.grid_extent(ctx.vlm.processor, grid, image.size)
        fig, axes = plt.subplots(len(keeps), len(methods), figsize=(2.3 * len(methods), 2.5 * len(keeps)), squeeze=False)
        for c, m in enumerate(methods):
            for r, k in enumerate(keeps):
                res = runs[(m, k)]
                # a multi-stage method's keep is its average over layers: say which stage is drawn
                what = (f"{len(kept[(m, k)][i])}/{lay.n_image_tokens} from layer {res.stage_layers[-1]}"
                        if len(res.stage_layers) > 1 else f"{len(kept[(m, k)][i])}/{lay.n_image_tokens} kept")
                draw_overlay(axes[r, c], image, grid, kept[(m, k)][i], extent,
                             title=(f"{m}\n" if r == 0 else "") + f"keep {k:g}: {what}")
        fig.suptitle(f"{ctx.vlm.name}: kept image tokens (bright, outlined) - \"{s.question}\"; multi-stage methods: "
                     "their last stage (keep is their average over layers)", fontsize=10)
        paths += save(fig, ctx.out, f"overlays_{i}")
    paths.append(write_json(ctx.out / "overlays.json", {
        "samples": [s.id for s in shown],
        "kept_columns": {f"{m}@{k}": [c.tolist() for c in cols] for (m, k), cols in kept.items()}}))
    return paths
