"""DivPrune's rule (Alvar et al. 2025; vbdi/divprune): greedy max-min diversity (1 - cosine) of the
embeddings the LLM receives. The method around it and its fidelity notes:
`vtanalysis.prune.methods.divprune`.

    x: [n, D] -> [k] indices (pick order)
        D_ij = 1 - cos(x_i, x_j)
        pick 1  = argmax_j (second-smallest entry of column j of D: the distance to j's nearest other token)
        pick i  = argmax_j min_{p picked} D_pj
"""
from __future__ import annotations

import torch

from .similarity import cosine_matrix


def divprune(x: torch.Tensor, k: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """DivPrune (vbdi/divprune, `LLaVA/llava/model/llava_arch.py`, `DivPrune`) on the embeddings the
    LLM receives: x [n, D] -> [min(k, n)] indices in pick order.

    dtype None: our float32 rule (F.normalize, float32 distances). A dtype (the `authors_dtype` knob):
    the authors' arithmetic in it, x / ||x|| and 1 - x x^T rounded to `dtype` (their LLaVA runs it in
    float16). Either way a picked token is excluded explicitly: theirs relies on its zero
    self-distance, so float16 can pick an exact duplicate (e.g. a second newline token) twice, which
    the engine refuses; that is the only place the dtype variant leaves their code."""
    n = x.shape[0]
    picks = torch.empty(min(k, n), dtype=torch.long, device=x.device)
    if len(picks) == 0:
        return picks
    if dtype is None:
        dist = 1 - cosine_matrix(x)
    else:
        xd = x.to(dtype)
        xn = xd / xd.norm(dim=-1, keepdim=True)
        dist = 1.0 - xn @ xn.T
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
