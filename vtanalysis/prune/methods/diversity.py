"""Selections for diversity: DivPrune (max-min diversity), SCOPE (saliency x coverage) and
VisPruner (important + de-duplicated diverse tokens).

Both are sequential in the number of picks. Each pick stays on the device: the argmax is a
1-element tensor used as an index (a 0-d one would be read back to the host by Python indexing),
so a pick costs a few kernels and no host round trip.

    divprune(x, k)   x: [n, D] -> [k] indices (pick order), 7 dispatched ops per pick
        D_ij = 1 - cos(x_i, x_j)
        pick 1  = argmax_j (second-smallest entry of column j of D: the distance to j's nearest other token)
        pick i  = argmax_j min_{p picked} D_pj
    scope(f, s, k)   f: [n, Dv], s: [n] -> [k] indices (pick order), 12 dispatched ops per pick
        S_ij = cos(f_i, f_j);  m_j = 0 at the start, then max over picked p of S_pj
        pick    = argmax_c s_c^alpha * sum_j max(0, S_cj - m_j)   (picked tokens excluded)
    vispruner(f, s, k)   f: [n, Dv], s: [n] -> [k] indices; ceil((n - k_imp - k_div) / 8) rounds of
        11 dispatched ops; k_imp = floor(k x important_ratio) tokens of highest s, then rounds that
        split the rest alternately (a: 0th, 2nd, ... b: 1st, 3rd, ... of the current order) and drop
        the (at most 8) a-tokens most cosine-similar to some b-token, until k - k_imp remain
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _cosine(x: torch.Tensor) -> torch.Tensor:
    x = F.normalize(x.float(), dim=-1)
    return x @ x.T


def divprune(x: torch.Tensor, k: int) -> torch.Tensor:
    """DivPrune (vbdi/divprune, `LLaVA/llava/model/llava_arch.py`, `DivPrune`) on the embeddings the
    LLM receives. Differences from the authors' code: float32 instead of float16, and a picked token
    is excluded explicitly (theirs relies on its zero self-distance, so float16 can pick an exact
    duplicate, e.g. a second newline token, twice)."""
    n = x.shape[0]
    picks = torch.empty(min(k, n), dtype=torch.long, device=x.device)
    if len(picks) == 0:
        return picks
    dist = 1 - _cosine(x)
    # the smallest entry of each column is its diagonal (~0): the second is the nearest other token
    if n > 1:
        first = torch.kthvalue(dist, 2, dim=0).values.argmax(dim=0, keepdim=True)
    else:
        first = torch.zeros(1, dtype=torch.long, device=x.device)
    picks[:1] = first
    nearest = dist.index_select(0, first)[0].index_fill(0, first, float("-inf"))
    for i in range(1, len(picks)):
        j = nearest.argmax(dim=0, keepdim=True)
        picks[i:i + 1] = j
        nearest = torch.minimum(nearest, dist.index_select(0, j)[0]).index_fill(0, j, float("-inf"))
    return picks


def scope(features: torch.Tensor, saliency: torch.Tensor, k: int, alpha: float = 1.0) -> torch.Tensor:
    """SCOPE (kinredon/SCOPE, `scope/clip_encoder.py`, `SCOPE`): greedy coverage gain over every token
    (the candidate's own row included), weighted by its [CLS] saliency^alpha. Saliency is the head
    mean here, the authors sum over heads: a constant factor that changes no argmax."""
    n = features.shape[0]
    picks = torch.empty(min(k, n), dtype=torch.long, device=features.device)
    sim = _cosine(features)
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


def vispruner(features: torch.Tensor, saliency: torch.Tensor, k: int, important_ratio: float = 0.5,
              per_round: int = 8) -> torch.Tensor:
    """VisPruner (Theia-4869/VisPruner, `llava/model/llava_arch.py`, `encode_images`): the
    floor(k x important_ratio) tokens of highest [CLS] attention, then diverse tokens from the rest
    (kept in descending-attention order): each round splits them alternately into a and b and drops
    the min(8, excess) a-tokens with the highest max-cosine to b (features: the feature-layer patch
    states); the survivors' order is a (by that score, descending) then b. The authors' code stops
    with an error when the rest is odd or fewer than 8 diverse tokens are asked for; here a round
    drops at most half the a-tokens instead. Ties keep the earlier token (stable sorts)."""
    n = features.shape[0]
    k = min(k, n)
    n_imp = int(k * important_ratio)
    n_div = k - n_imp
    order = torch.argsort(saliency.float(), descending=True, stable=True)
    important, rest = order[:n_imp], order[n_imp:]
    if n_div == 0:
        return important
    x = F.normalize(features.float(), dim=-1)
    size = n - n_imp  # host integer: the rest's length, known from k alone
    while size > n_div:
        a, b = rest[0::2], rest[1::2]
        drop = min(per_round, size - n_div, (size + 1) // 2)
        score = (x[a] @ x[b].T).amax(-1)
        rest = torch.cat([a[torch.argsort(score, descending=True, stable=True)[drop:]], b])
        size -= drop
    return torch.cat([important, rest])
