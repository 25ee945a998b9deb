"""VisionZip's rule for one crop (Yang et al. 2024; dvlab-research/VisionZip): dominant tokens by
[CLS] attention, contextual tokens that merge the rest by key similarity. The method around it, its
budgets per crop and its fidelity notes: `vtanalysis.prune.methods.visionzip`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .indices import true_indices

CONTEXTUAL_SHARE = 10 / 64


def split(keep: int, contextual: int | None = None) -> tuple[int, int]:
    """(dominant, contextual) token counts for a budget of `keep` tokens; dominant counts [CLS]."""
    c = round(keep * CONTEXTUAL_SHARE) if contextual is None else contextual
    c = min(max(c, 0), keep - 1) if keep > 1 else 0
    return keep - c, c


@dataclass
class Selection:
    """One crop's VisionZip choice, as indices into the crop's n patches (on the inputs' device).

    order: [keep] the sequence the LLM sees: [slot, dominant ascending, targets]; all n when keep >= n.
    targets: [k_c] patches whose slot carries a contextual (merged) token.
    owner: [n] the target each merged patch joined, -1 for the rest (dominant, targets, dropped).
    slot: 0-dim index of the patch whose slot carries [CLS], or None when the crop is kept whole.
    """

    order: torch.Tensor
    targets: torch.Tensor
    owner: torch.Tensor
    slot: torch.Tensor | None


def select(saliency: torch.Tensor, keys: torch.Tensor, keep: int, *, contextual: int | None = None) -> Selection:
    """Choose one crop's dominant and contextual tokens (steps 1-3, 5 of the module docstring).

    Args:
        saliency: [n], the [CLS] attention of each patch.
        keys: [n, d] head-mean keys of the same layer, the similarity metric.
        keep: budget, 1 <= keep; keep >= n keeps the crop whole (no [CLS], nothing merged).
        contextual: contextual token count (default round(keep * 10 / 64)).
    """
    n, device = saliency.numel(), saliency.device
    owner = torch.full((n,), -1, dtype=torch.long, device=device)
    if keep >= n:
        return Selection(torch.arange(n, device=device), owner[:0], owner, None)
    n_dom, n_ctx = split(keep, contextual)
    n_patch_dom = n_dom - 1  # [CLS] is one of the dominant tokens
    dominant = torch.topk(saliency.float(), n_patch_dom).indices.sort().values
    is_rest = torch.ones(n, dtype=torch.bool, device=device)
    is_rest[dominant] = False
    n_rest = n - n_patch_dom  # >= n_ctx + 2 since keep < n
    rest = true_indices(is_rest, n_rest)
    if n_ctx == 0:
        return Selection(torch.cat([rest[:1], dominant]), owner[:0], owner, rest[0])
    step = max(1, n_rest // n_ctx)
    targets = rest[torch.arange(0, n_rest, step, device=device)[:n_ctx]]
    slot = rest[1 if step > 1 else n_ctx]  # a patch that is merged away, never a target
    is_rest[targets] = False
    others = true_indices(is_rest, n_rest - n_ctx)
    sim = F.normalize(keys[others].float(), dim=-1) @ F.normalize(keys[targets].float(), dim=-1).T
    owner[others] = targets[sim.argmax(dim=1)]
    return Selection(torch.cat([slot[None], dominant, targets]), targets, owner, slot)


def merge(features: torch.Tensor, owner: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Step 4: features [n, D] -> [len(targets), D], target + mean of the patches that joined it."""
    device = features.device
    slot = torch.full((features.shape[0] + 1,), len(targets), dtype=torch.long, device=device)
    slot[targets] = torch.arange(len(targets), device=device)
    group = slot[owner]  # owner -1 reads the last entry: the spare row len(targets)
    sums = torch.zeros(len(targets) + 1, features.shape[1], dtype=torch.float32, device=device)
    sums.index_add_(0, group, features.float())
    counts = torch.zeros(len(targets) + 1, device=device).index_add_(0, group, torch.ones_like(group, dtype=torch.float32))
    mean = sums[:-1] / counts[:-1, None].clamp_min(1)
    return (features[targets].float() + mean).to(features.dtype)
