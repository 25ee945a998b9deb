"""FastV (Chen et al. 2024, "An image is worth 1/2 tokens after layer 2").

Score: attention of layer K-1, head-mean, last prompt token's row, over image tokens.
Keep the top-k image tokens; layers K.. see only those (original RoPE positions kept).
Defaults from the official README: K = 2 (the HF demo uses K = 3).
"""
from __future__ import annotations

import torch
from ..plans import single_stage
from ..registry import Method, Need, register

LAYER = 2


def select(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Top-`keep` indices of `scores`, in ascending (original sequence) order.

    Args:
        scores: [N] image-token scores (e.g. last-row attention of layer K-1).
        keep: tokens to keep, 1 <= keep <= N.
    Returns:
        LongTensor [keep], sorted, no duplicates.
    """
    return torch.topk(scores, keep, sorted=False).indices.sort().values


def choose(inputs, keep, stage):
    return select(inputs.last_row, keep)


register(Method(name="fastv", summary="FastV: top-k of layer K-1 last-row attention (K=2)", where="llm",
                needs=(Need.LAST_ROW,), choose=choose, plan=single_stage(LAYER, rounding="round")))
