"""Similarities between tokens, computed in float32 whatever the model's dtype."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    """[n, D] -> [n, n] cosine similarities, in float32."""
    x = F.normalize(x.float(), dim=-1)
    return x @ x.T
