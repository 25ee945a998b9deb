"""Exact softmax attention rows for a few queries, without forming the full L x L map."""
from __future__ import annotations

import torch


def attention_rows(query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None,
                   scaling: float, rows: torch.Tensor, *, blocked: torch.Tensor | None = None) -> torch.Tensor:
    """Causal softmax attention of selected query rows against all keys.

    Implements A[b, h, r, :] = softmax_j(q[b, h, rows[b, r]] . k[b, h // g, j] * scaling + M[b, rows[b, r], j]),
    the same rows eager attention would give, with g = H / Hkv (grouped-query attention).

    Args:
        query: [B, H, Lq, D] after rotary embedding.
        key: [B, Hkv, Lk, D] after rotary embedding (all keys, Lk >= Lq).
        attention_mask: None (plain causal), a bool mask [B or 1, 1, Lq, Lk] (True = attend), or an
            additive float mask of that shape, as the model passed it to its attention function.
        scaling: the softmax scale (1 / sqrt(D) for these families).
        rows: LongTensor [B, R] of query indices (into Lq) per sample.
        blocked: `causal_blocked(rows, Lq, Lk)`, when the caller reuses it across layers (only read
            when attention_mask is None).
    Returns:
        float32 [B, H, R, Lk]; cost O(B * H * R * Lk * D) instead of O(B * H * Lq * Lk * D).
    """
    b, h, lq, d = query.shape
    hkv, lk = key.shape[1], key.shape[2]
    idx = rows.to(query.device)
    q = query.gather(2, idx[:, None, :, None].expand(b, h, idx.shape[1], d)).float()
    q = q.view(b, hkv, h // hkv, idx.shape[1], d)
    scores = torch.matmul(q, key.float()[:, :, None].transpose(-1, -2)).view(b, h, idx.shape[1], lk) * scaling
    if attention_mask is None:
        if blocked is None:
            blocked = causal_blocked(idx, lq, lk)
        scores = scores.masked_fill(blocked, float("-inf"))
    else:
        mask = attention_mask.expand(b, -1, -1, -1)[:, :, :, :lk]
        picked = mask.gather(2, idx[:, None, :, None].expand(b, mask.shape[1], idx.shape[1], lk))
        if picked.dtype == torch.bool:
            scores = scores.masked_fill(~picked, float("-inf"))
        else:
            scores = scores + picked.float()
    return torch.softmax(scores, dim=-1)


def causal_blocked(rows: torch.Tensor, lq: int, lk: int) -> torch.Tensor:
    """[B, 1, R, Lk] bool: True where key j lies after query rows[b, r] (queries are the last Lq of
    Lk positions; prefill: Lq == Lk)."""
    allowed = torch.arange(lk, device=rows.device)[None, :] <= (rows[..., None] + (lk - lq))
    return ~allowed[:, None]


def pad_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    """Per-sample query indices (different lengths) as [B, R], right-padded by repeating each last index."""
    width = max(len(r) for r in rows)
    return torch.stack([torch.cat([r, r[-1:].expand(width - len(r))]) for r in rows])
