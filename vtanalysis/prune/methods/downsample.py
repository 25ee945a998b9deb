"""`downsample` baseline: feed a smaller image, so that the processor itself yields about the budget.

Only for families whose image-token count follows the image size (`Adapter.resizable`: Qwen2-VL's
dynamic resolution, LLaVA-NeXT's anyres tiles; LLaVA-NeXT keeps its base image, so its floor is
the base grid plus the fewest tiles). A fixed-resolution family (LLaVA-1.5) gets a `VTAError` that
names `pool`, the same idea done on the tokens.

The image is scaled by one factor in both directions (aspect kept); the factor is the largest,
found by bisection on the processor's own token count, whose count does not exceed
`keep_count(keep, n)` of the full-size image. Everything happens on the host, before the run.
"""
from __future__ import annotations

from PIL import Image

from ...errors import VTAError
from ...models.images import load_image
from ..budget import keep_count
from ..plans import choose_first, no_stage
from ..registry import Method, register


def image_tokens(vlm, image: Image.Image) -> int:
    return vlm.prepare([image], ["x"]).layouts[0].n_image_tokens  # ok-literal: any question; only the image counts


def downsampled(vlm, images, keep, *, steps: int = 14) -> list[Image.Image]:
    """Each image resized so its token count is at most keep of its full-size count (largest such)."""
    if not vlm.adapter.resizable:
        raise VTAError(f"'downsample' needs a family whose token count follows the image size (Qwen2-VL, "
                       f"LLaVA-NeXT); {vlm.adapter.family} always makes the same grid: use 'pool', which "
                       "averages the image tokens down to the budget.")
    out = []
    for image in images:
        image = load_image(image)
        full = image_tokens(vlm, image)
        budget = keep_count(keep, full)
        if budget >= full:
            out.append(image)
            continue

        def resized(f: float) -> Image.Image:
            w, h = image.size
            return image.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BICUBIC)

        smallest = image_tokens(vlm, resized(1e-3))
        if smallest > budget:
            raise VTAError(f"'downsample' cannot reach {budget} image tokens: the processor gives at least "
                           f"{smallest} for any image size ({full} at full size); use a larger keep, or 'pool'.")
        lo, hi = 1e-3, 1.0  # count(lo) <= budget < count(hi)
        for _ in range(steps):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if image_tokens(vlm, resized(mid)) <= budget else (lo, mid)
        out.append(resized(lo))
    return out


register(Method(name="downsample", summary="baseline: the image resized so the processor yields about the budget "
                "(dynamic-resolution families; through `prune.downsampled` + 'none')", where="image", needs=(),
                choose=choose_first, plan=no_stage))
