"""Index helpers that stay on the device: no `nonzero`, no boolean-mask indexing (each of which
waits for the GPU to learn an output size the host already knows)."""
from __future__ import annotations

import torch


def true_indices(mask: torch.Tensor, count: int) -> torch.Tensor:
    """Ascending indices of the True entries of `mask` [..., n] along its last dim, when the caller
    knows there are `count` of them (per row): [..., count]."""
    return torch.sort((~mask).to(torch.uint8), dim=-1, stable=True).indices[..., :count]
