"""DivPrune (Alvar et al. 2025, "DivPrune: diversity-based visual token pruning for large multimodal
models"; authors' code vbdi/divprune): keep the image tokens that solve the max-min diversity
problem greedily on the LLM's input embeddings. Sequential in the picks; each pick stays on the
device (the argmax is a 1-element tensor used as an index), 7 dispatched ops a pick.

    x: [n, D] -> [k] indices (pick order)
        D_ij = 1 - cos(x_i, x_j)
        pick 1  = argmax_j (second-smallest entry of column j of D: the distance to j's nearest other token)
        pick i  = argmax_j min_{p picked} D_pj
"""
from __future__ import annotations

import torch
from ..plans import cosine_matrix, pre_stage
from ..registry import Method, Need, register


def divprune(x: torch.Tensor, k: int) -> torch.Tensor:
    """DivPrune (vbdi/divprune, `LLaVA/llava/model/llava_arch.py`, `DivPrune`) on the embeddings the
    LLM receives. Differences from the authors' code: float32 instead of float16, and a picked token
    is excluded explicitly (theirs relies on its zero self-distance, so float16 can pick an exact
    duplicate, e.g. a second newline token, twice)."""
    n = x.shape[0]
    picks = torch.empty(min(k, n), dtype=torch.long, device=x.device)
    if len(picks) == 0:
        return picks
    dist = 1 - cosine_matrix(x)
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



def choose_divprune(inputs, keep, stage):
    """DivPrune over every image token the LLM would receive (LLaVA-NeXT newlines are candidates
    too, as in the authors' code), kept in sequence order."""
    return divprune(inputs.image_embeds, keep).sort().values



register(Method(name="divprune", summary="DivPrune: greedy max-min diversity (1 - cosine) of the LLM's image embeddings, "
                "before the LLM", where="pre", needs=(Need.EMBEDS,), choose=choose_divprune,
                plan=pre_stage(rounding="round"), positions="renumber"))
