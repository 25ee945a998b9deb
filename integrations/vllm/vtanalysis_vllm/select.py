"""One image's (or crop's) kept embeddings, in the order the LLM sees them, by the same rules
`vtanalysis.prune` runs (`rules/`, shipped with this package from the vtanalysis source tree).

Shapes, for a crop of n = h x w patches kept to k tokens:
    patches [n, Dv]  the vision tower's feature-layer output of the patch tokens
    cls [Dv]         the [CLS] token's feature there (VisionZip)
    saliency [n]     the [CLS] query's softmax attention to each patch, head-mean (FasterVLM, VisionZip)
    keys [n, d]      the patches' keys at that layer, head-mean (VisionZip)
    -> [k, D]        projector rows; positions are renumbered by vLLM, as `positions="renumber"` does
"""
from __future__ import annotations

import torch

from .rules import divprune, lattice, topk, visionzip


def kept_embeddings(method: str, k: int, projector, patches: torch.Tensor, grid: tuple[int, int], *,
                    cls: torch.Tensor | None = None, saliency: torch.Tensor | None = None,
                    keys: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the k embeddings `method` keeps of one crop [k, D], the patches they stand for [k'] ascending).

    The patches are what `vtanalysis.prune.select` reports as kept: every patch when k >= n; for
    VisionZip the dominant patches and the contextual targets (its [CLS] row stands for no patch,
    so k' = k - 1)."""
    n = patches.shape[0]
    if k >= n:
        return projector(patches), torch.arange(n, device=patches.device)
    if method == "visionzip":
        # [CLS], the dominant patches ascending, then each contextual target's merged feature
        choice = visionzip.select(saliency, keys, k)
        dominant = choice.order[1:k - len(choice.targets)]
        parts = [cls[None], patches[dominant]]
        if len(choice.targets):
            parts.append(visionzip.merge(patches, choice.owner, choice.targets))
        return projector(torch.cat(parts)), choice.order[1:].sort().values
    if method == "fastervlm":
        kept = topk.top_k(saliency, k)
        return projector(patches[kept]), kept
    embeds = projector(patches)
    if method == "divprune":
        kept = divprune.divprune(embeds, k).sort().values
        return embeds[kept], kept
    h, w = grid
    points, taken = lattice.lattice(h, w, k, embeds.device)
    if method == "uniform":
        return embeds[points], points
    if method == "pool":
        return lattice.pool_blocks(embeds, h, w, k, taken).to(embeds.dtype), points
    raise ValueError(f"vtanalysis-vllm: no rule for method {method!r}")


def cls_attention(query: torch.Tensor, key: torch.Tensor, heads: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(saliency [B, T - 1], keys [B, T - 1, d]) of a vision layer's query and key [B, T, heads * d]
    (token 0 is [CLS]): the [CLS] row of softmax(q k^T * scale), head-mean, over the patches; and
    the patches' head-mean keys."""
    b, t, _ = query.shape
    q = query.float().view(b, t, heads, -1)
    kk = key.float().view(b, t, heads, -1)
    probs = torch.einsum("bhd,bthd->bht", q[:, 0], kk).mul(scale).softmax(dim=-1)
    return probs.mean(dim=1)[:, 1:], kk.mean(dim=2)[:, 1:]
