"""The top-k of a per-token score, in sequence order (FastV's rule on attention rows; FasterVLM's on
the vision [CLS] attention)."""
from __future__ import annotations

import torch


def top_k(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Top-`keep` indices of `scores`, in ascending (original sequence) order.

    Args:
        scores: [N] image-token scores (e.g. last-row attention of layer K-1).
        keep: tokens to keep, 1 <= keep <= N.
    Returns:
        LongTensor [keep], sorted, no duplicates.
    """
    return torch.topk(scores, keep, sorted=False).indices.sort().values
