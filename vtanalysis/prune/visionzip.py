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

from .indices import true_indices
from .vision import projector_rows

CONTEXTUAL_SHARE = 10 / 64


def split(keep: int, contextual: int | None = None) -> tuple[int, int]:
    """(dominant, contextual) token counts for a budget of `keep` tokens."""
    c = round(keep * CONTEXTUAL_SHARE) if contextual is None else contextual
    c = min(max(c, 0), keep - 1) if keep > 1 else 0
    return keep - c, c


def select(saliency: torch.Tensor, keys: torch.Tensor, keep: int, *, contextual: int | None = None):
    """Choose dominant and contextual tokens (on the inputs' device).

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
    n, device = saliency.numel(), saliency.device
    n_dom, n_ctx = split(keep, contextual)
    dominant = torch.topk(saliency.float(), n_dom).indices
    is_rest = torch.ones(n, dtype=torch.bool, device=device)
    is_rest[dominant] = False
    n_rest = n - n_dom
    owner = torch.full((n,), -1, dtype=torch.long, device=device)
    owner[dominant] = dominant
    if n_ctx == 0 or n_rest == 0:
        return dominant.sort().values, owner
    rest = true_indices(is_rest, n_rest)
    step = max(1, n_rest // n_ctx)
    targets = rest[torch.arange(0, n_rest, step, device=device)[:n_ctx]]
    owner[targets] = targets
    is_rest[targets] = False
    n_others = n_rest - targets.numel()
    if n_others:
        others = true_indices(is_rest, n_others)
        sim = F.normalize(keys[others].float(), dim=-1) @ F.normalize(keys[targets].float(), dim=-1).T
        owner[others] = targets[sim.argmax(dim=1)]
    return torch.cat([dominant, targets]).sort().values, owner


def merge(features: torch.Tensor, owner: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Mean of each kept token's group: features [N, D] -> [len(kept), D] (dropped tokens ignored)."""
    device = features.device
    owner, kept = owner.to(device), kept.to(device)
    slot = torch.full((features.shape[0],), -1, dtype=torch.long, device=device)
    slot[kept] = torch.arange(len(kept), device=device)
    group = torch.where(owner >= 0, slot[owner.clamp_min(0)], -1)
    member = (group >= 0).float()  # dropped tokens (and tokens of unlisted groups) add zero
    group = group.clamp_min(0)
    sums = torch.zeros(len(kept), features.shape[1], dtype=torch.float32, device=device)
    sums.index_add_(0, group, features.float() * member[:, None])
    counts = torch.zeros(len(kept), device=device).index_add_(0, group, member)
    return (sums / counts[:, None]).to(features.dtype)


def plan(saliency: torch.Tensor, keys: torch.Tensor, newline_split: tuple[torch.Tensor, torch.Tensor], keep: int, *,
         contextual: int | None = None):
    """`select` over one image block's layout columns, LLaVA-NeXT newline tokens kept first and
    counted in one global budget (the authors budget per crop, newlines on top: not reproduced yet). saliency [n], keys [n, d]; newline_split =
    (newline indices, other indices), as `engine.split_newlines` gives.
    Returns (kept [keep], owner [n]) in column indices."""
    newlines, patches = newline_split
    newlines = newlines[:keep]
    owner = torch.full((saliency.numel(),), -1, dtype=torch.long, device=saliency.device)
    owner[newlines] = newlines
    k = keep - len(newlines)
    if k <= 0:
        return newlines, owner
    kept, sub_owner = select(saliency[patches], keys[patches], k, contextual=contextual)
    owner[patches] = torch.where(sub_owner >= 0, patches[sub_owner.clamp_min(0)], -1)
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
        device = output.device
        rows = projector_rows(self.vlm, self.batch, n_patches, n_inputs)  # layout info, built on the host
        columns = self.capture.columns(self.batch)
        flat_in = feats.reshape(n_inputs * n_patches, -1)
        # one spare row at the end takes the writes of kept tokens that are not merged
        flat_out = torch.cat([output.reshape(n_inputs * n_patches, -1), output.new_zeros(1, output.shape[-1])])
        spare = n_inputs * n_patches
        for b, lay in enumerate(self.batch.layouts):
            r = rows[b]
            newline = r < 0
            split_cols = (newline.nonzero().flatten().to(device), (~newline).nonzero().flatten().to(device))
            r = r.to(device)
            kept, owner = plan(*columns[b], split_cols, min(self.keep_of(lay.n_image_tokens), len(r)),
                               contextual=self.contextual)
            group_size = torch.zeros(len(r), dtype=torch.long, device=device).index_add_(
                0, owner.clamp_min(0), (owner >= 0).long())
            merged_here = (r[kept] >= 0) & (group_size[kept] > 1)
            merged = merge(flat_in[r.clamp_min(0)], owner, kept)  # [len(kept), Dv]
            projected = module.forward(merged).to(flat_out.dtype)  # module.forward: no hook recursion
            flat_out[torch.where(merged_here, r[kept], spare)] = projected
        return flat_out[:spare].view_as(output)
