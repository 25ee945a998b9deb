"""SCOPE (Deng et al. 2025, "SCOPE: saliency-coverage oriented token pruning"; authors' code
kinredon/SCOPE): greedy coverage gain of the feature-layer patch states, weighted by [CLS]
saliency^alpha, per crop, before the LLM. Sequential in the picks, 12 dispatched ops a pick.

    f: [n, Dv], s: [n] -> [k] indices (pick order)
        S_ij = cos(f_i, f_j);  m_j = 0 at the start, then max over picked p of S_pj
        pick = argmax_c s_c^alpha * sum_j max(0, S_cj - m_j)   (picked tokens excluded)
"""
from __future__ import annotations

import torch
from ..plans import among_patches, cosine_matrix, pre_stage
from ..registry import Method, Need, register


def scope(features: torch.Tensor, saliency: torch.Tensor, k: int, alpha: float = 1.0) -> torch.Tensor:
    """SCOPE (kinredon/SCOPE, `scope/clip_encoder.py`, `SCOPE`): greedy coverage gain over every token
    (the candidate's own row included), weighted by its [CLS] saliency^alpha. Saliency is the head
    mean here, the authors sum over heads: a constant factor that changes no argmax."""
    n = features.shape[0]
    picks = torch.empty(min(k, n), dtype=torch.long, device=features.device)
    sim = cosine_matrix(features)
    weight = saliency.float().clamp_min(0) ** alpha
    covered = torch.zeros(n, device=features.device)
    taken = torch.zeros(n, dtype=torch.bool, device=features.device)
    for i in range(len(picks)):
        gain = (sim - covered).clamp_min(0).sum(1) * weight  # sim is symmetric: row c = column c
        j = gain.masked_fill(taken, float("-inf")).argmax(dim=0, keepdim=True)
        picks[i:i + 1] = j
        covered = torch.maximum(covered, sim.index_select(0, j)[0])
        taken.index_fill_(0, j, True)
    return picks



def pick_scope(inputs, patches, k, alpha=1.0):
    return scope(inputs.vision_features[patches], inputs.saliency[patches], k, alpha)



register(Method(name="scope", summary="SCOPE: greedy coverage gain of vision features x [CLS] saliency^alpha, per crop, "
                "before the LLM", where="pre", needs=(Need.CLS, Need.VISION_FEATURES), choose=among_patches(pick_scope),
                plan=pre_stage(), positions="renumber", choose_knobs=("alpha",)))
