"""VisionZip (Yang et al. 2024): dominant tokens by [CLS] attention, plus contextual tokens that
merge the rest by key similarity. Runs before the LLM.

For a budget k = k_d + k_c (default k_c = round(k * 10 / 64): 54 + 10 of 64, 108 + 20 of 128,
162 + 30 of 192, the authors' settings):
  1. dominant D = the k_d tokens with the largest [CLS] attention (head-sum or head-mean rank alike);
  2. of the remaining tokens R (ascending), k_c evenly spaced targets: R[0], R[s], R[2s], ... with
     s = max(1, |R| // k_c);
  3. every other token of R joins the target whose key is most cosine-similar;
  4. a target's token becomes the mean of its group's features (target included).
The authors' code also keeps [CLS] as a dominant token when the vision features include it;
LLaVA's 'default' feature strategy drops [CLS], so here all k_d dominant tokens are patches.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .vision import projector_rows

CONTEXTUAL_SHARE = 10 / 64


def split(keep: int, contextual: int | None = None) -> tuple[int, int]:
    """(dominant, contextual) token counts for a budget of `keep` tokens."""
    c = round(keep * CONTEXTUAL_SHARE) if contextual is None else contextual
    c = min(max(c, 0), keep - 1) if keep > 1 else 0
    return keep - c, c


def select(saliency: torch.Tensor, keys: torch.Tensor, keep: int, *, contextual: int | None = None):
    """Choose dominant and contextual tokens.

    Args:
        saliency: [N] [CLS] attention per patch token.
        keys: [N, d] keys of the same layer (head-mean), the similarity metric.
        keep: budget, 1 <= keep <= N.
        contextual: contextual token count (default round(keep * 10 / 64)).
    Returns:
        kept: LongTensor [keep], ascending, no duplicates (dominant tokens and targets).
        owner: LongTensor [N]: the kept token whose merged feature includes token j (j itself for
            dominant tokens and targets), or -1 where the token is dropped (only when contextual = 0).
    """
    n = saliency.numel()
    n_dom, n_ctx = split(keep, contextual)
    dominant = torch.topk(saliency.float(), n_dom).indices
    is_rest = torch.ones(n, dtype=torch.bool)
    is_rest[dominant] = False
    rest = is_rest.nonzero().flatten()
    owner = torch.full((n,), -1, dtype=torch.long)
    owner[dominant] = dominant
    if n_ctx == 0 or rest.numel() == 0:
        return dominant.sort().values, owner
    step = max(1, rest.numel() // n_ctx)
    targets = rest[torch.arange(0, rest.numel(), step)[:n_ctx]]
    owner[targets] = targets
    others = rest[owner[rest] < 0]
    if others.numel():
        sim = F.normalize(keys[others].float(), dim=-1) @ F.normalize(keys[targets].float(), dim=-1).T
        owner[others] = targets[sim.argmax(dim=1)]
    return torch.cat([dominant, targets]).sort().values, owner


def merge(features: torch.Tensor, owner: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Mean of each kept token's group: features [N, D] -> [len(kept), D] (dropped tokens ignored)."""
    slot = torch.full((features.shape[0],), -1, dtype=torch.long)
    slot[kept] = torch.arange(len(kept))
    group = torch.where(owner >= 0, slot[owner.clamp_min(0)], -1)
    members = (group >= 0).nonzero().flatten()
    group = group[members].to(features.device)
    sums = torch.zeros(len(kept), features.shape[1], dtype=torch.float32, device=features.device)
    sums.index_add_(0, group, features[members.to(features.device)].float())
    counts = torch.zeros(len(kept), device=features.device).index_add_(0, group, torch.ones(len(group), device=features.device))
    return (sums / counts[:, None]).to(features.dtype)


def plan(saliency: torch.Tensor, keys: torch.Tensor, newline: torch.Tensor, keep: int, *,
         contextual: int | None = None):
    """`select` over one image block's layout columns, LLaVA-NeXT newline tokens kept first (as in
    FasterVLM's code) and counted in the budget. saliency [n], keys [n, d], newline [n] bool.
    Returns (kept [keep], owner [n]) in column indices."""
    newlines = newline.nonzero().flatten()[:keep]
    patches = (~newline).nonzero().flatten()
    owner = torch.full((newline.numel(),), -1, dtype=torch.long)
    owner[newlines] = newlines
    k = keep - len(newlines)
    if k <= 0:
        return newlines, owner
    kept, sub_owner = select(saliency[patches], keys[patches], k, contextual=contextual)
    owned = sub_owner >= 0
    owner[patches[owned]] = patches[sub_owner[owned]]
    return torch.cat([newlines, patches[kept]]).sort().values, owner


class ProjectorMerge:
    """While active, each VisionZip target token's projector output is replaced by the projector
    applied to the mean of its group's vision features (the authors merge before the projector).

    Args:
        vlm, batch: the run's model and inputs.
        keep_of: image-token count -> budget (the pre-LLM stage's `keep`).
        capture: the run's `vision.VisionCapture` (saliency and keys are read when the projector runs).
        contextual: contextual token count (default: `split`).
    """

    def __init__(self, vlm, batch, keep_of, capture, contextual: int | None = None):
        self.vlm, self.batch, self.keep_of, self.capture, self.contextual = vlm, batch, keep_of, capture, contextual

    def __enter__(self):
        self._handle = self.vlm.model.model.multi_modal_projector.register_forward_hook(self._merge)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        return False

    def _merge(self, module, args, output):
        feats = args[0]  # [V, N, Dv]
        n_inputs, n_patches = feats.shape[:2]
        rows = projector_rows(self.vlm, self.batch, n_patches, n_inputs)
        columns = self.capture.columns(self.batch)
        flat_in = feats.reshape(n_inputs * n_patches, -1)
        flat_out = output.reshape(n_inputs * n_patches, -1).clone()
        for b, lay in enumerate(self.batch.layouts):
            r = rows[b].cpu()
            kept, owner = plan(*columns[b], r < 0, min(self.keep_of(lay.n_image_tokens), len(r)),
                               contextual=self.contextual)
            group_size = torch.bincount(owner[owner >= 0], minlength=len(r))
            targets = kept[(r[kept] >= 0) & (group_size[kept] > 1)]
            if not len(targets):
                continue
            merged = merge(flat_in[r.clamp_min(0)], owner, targets)  # [len(targets), Dv]
            flat_out[r[targets].to(flat_out.device)] = module.forward(merged).to(flat_out.dtype)  # no hook recursion
        return flat_out.view_as(output)
