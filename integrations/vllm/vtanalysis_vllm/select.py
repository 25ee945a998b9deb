"""One image's kept embeddings, in the order the LLM sees them, by the same rules `vtanalysis.prune`
runs (`rules/`, shipped with this package from the vtanalysis source tree), with the same budgets:
each crop keeps the method's count of the tower's patches (at most what unpadding left it), newline
tokens are kept on top (`rules.budget.crop_budgets`).

Shapes, for an image of T crops of P patches packed into N rows (`packing.Packing`):
    embeds [N, D]        the projector rows vLLM would place in the prompt (newline rows included)
    features [T, P, Dv]  the vision tower's feature-layer output of each crop's patches
    cls [T, Dv]          each crop's [CLS] feature there (VisionZip)
    saliency [T, P]      the [CLS] query's softmax attention to each patch, head-mean (FasterVLM, VisionZip)
    keys [T, P, d]       the patches' keys at that layer, head-mean (VisionZip)
    -> ([k, D], kept rows [k'] ascending): vLLM numbers the shortened prompt consecutively, which is
       the methods' `positions="renumber"`.
"""
from __future__ import annotations

import torch

from .packing import Packing
from .rules import budget, divprune, lattice, topk, visionzip
from .settings import Settings


def crop_budgets(settings: Settings, packing: Packing) -> list[int]:
    """Tokens kept of each crop (`rules.budget.crop_budgets`, as `vtanalysis.prune` budgets them)."""
    return budget.crop_budgets(settings.keep, [packing.n_patches] * len(packing.crops),
                               [len(rows) for rows in packing.crops], settings.count_of)


def kept_count(settings: Settings, packing: Packing) -> int:
    """The image's token count after pruning: the crops' budgets plus its newline tokens."""
    return sum(crop_budgets(settings, packing)) + len(packing.newlines)


def kept_embeddings(settings: Settings, packing: Packing, embeds: torch.Tensor, projector, *,
                    features: torch.Tensor | None = None, cls: torch.Tensor | None = None,
                    saliency: torch.Tensor | None = None, keys: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the embeddings `settings.method` keeps [k, D], the rows they stand for [k'] ascending: what
    `vtanalysis.prune.select` reports as kept, in sequence order; for VisionZip a crop's [CLS] row
    stands for no row, so k' = k minus the reduced crops)."""
    device = embeds.device
    crops = [c.to(device) for c in packing.crops]
    newlines = packing.newlines.to(device)
    budgets = crop_budgets(settings, packing)
    if all(k >= len(rows) for rows, k in zip(crops, budgets)):
        every = torch.arange(len(embeds), device=device)
        return embeds, every
    method = settings.method
    if method == "visionzip":
        return _visionzip(packing, crops, budgets, newlines, embeds, projector, features, cls, saliency, keys)
    if method == "fastervlm":
        codes = packing.codes.to(device)
        picked = [rows[topk.top_k(saliency.flatten()[codes[rows]], k)] for rows, k in zip(crops, budgets) if k > 0]
        rows = torch.cat([newlines, *picked]).sort().values
        return embeds[rows], rows
    total = sum(budgets) + len(newlines)
    if method == "divprune":  # over every token the LLM would receive, newlines too (the authors' code)
        rows = divprune.divprune(embeds, total).sort().values
        return embeds[rows], rows
    if method in ("uniform", "pool"):
        grids = [(rows.to(device), h, w) for rows, h, w in packing.grids]
        counts = lattice.grid_counts([h * w for _, h, w in grids], total - len(newlines))
        out = embeds.clone() if method == "pool" else embeds
        picked = []
        for (rows, h, w), k in zip(grids, counts):
            points, taken = lattice.lattice(h, w, k, device)
            if not len(points):
                continue
            picked.append(rows[points])
            if method == "pool":
                out[rows[points]] = lattice.pool_blocks(embeds[rows], h, w, k, taken).to(out.dtype)
        rows = torch.cat([newlines, *picked]).sort().values
        return out[rows], rows
    raise ValueError(f"vtanalysis-vllm: no rule for method {method!r}")


def _visionzip(packing, crops, budgets, newlines, embeds, projector, features, cls, saliency, keys):
    """Per crop in turn: [CLS], the dominant patches ascending, the contextual targets' merged
    features; then the newline tokens (`vtanalysis.prune.methods.visionzip.choose`)."""
    codes = packing.codes.to(embeds.device)
    parts, kept = [], [newlines]
    for rows, k in zip(crops, budgets):
        if k == 0:
            continue
        if k >= len(rows):
            parts.append(embeds[rows])
            kept.append(rows)
            continue
        # the crop's index as a 1-element tensor: a 0-dim one would be read back to the host
        crop, patch = codes[rows[:1]] // packing.n_patches, codes[rows] % packing.n_patches
        choice = visionzip.select(saliency.index_select(0, crop)[0][patch], keys.index_select(0, crop)[0][patch], k)
        dominant = choice.order[1:k - len(choice.targets)]
        parts += [projector(cls.index_select(0, crop)), embeds[rows[dominant]]]
        if len(choice.targets):
            merged = visionzip.merge(features.index_select(0, crop)[0][patch], choice.owner, choice.targets)
            parts.append(projector(merged))
        kept.append(rows[choice.order[1:]])
    parts.append(embeds[newlines])
    return torch.cat(parts), torch.cat(kept).sort().values


def cls_attention(query: torch.Tensor, key: torch.Tensor, heads: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(saliency [B, T - 1], keys [B, T - 1, d]) of a vision layer's query and key [B, T, heads * d]
    (token 0 is [CLS]): the [CLS] row of softmax(q k^T * scale), head-mean, over the patches; and
    the patches' head-mean keys."""
    b, t, _ = query.shape
    q = query.float().view(b, t, heads, -1)
    kk = key.float().view(b, t, heads, -1)
    probs = torch.einsum("bhd,bthd->bht", q[:, 0], kk).mul(scale).softmax(dim=-1)
    return probs.mean(dim=1)[:, 1:], kk.mean(dim=2)[:, 1:]
