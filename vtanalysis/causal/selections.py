"""Kept sets that `horizon` and `agreement` compare: a registered method's, random ones at its budget."""
from __future__ import annotations

import torch

from ..prune import registry
from ..prune.run import select


def takes_layer(method: str) -> bool:
    """Whether the method's plan has a `layer` knob (an in-LLM method whose stage can move)."""
    return "layer" in registry.get(method).plan_knobs


def method_columns(vlm, batch, method: str, keep, layer: int | None = None, **knobs) -> list[torch.Tensor]:
    """Per sample, the image-token columns the method keeps at its first stage (CPU LongTensors); at
    `layer` when given and the method can prune there, else at the method's own layer."""
    if layer is not None and layer >= 1 and takes_layer(method):
        knobs = {**knobs, "layer": layer}
    stages = select(vlm, batch, method, keep, **knobs)
    if not stages:  # a keep-all budget: nothing pruned
        return [torch.arange(lay.n_image_tokens) for lay in batch.layouts]
    return [cols.cpu() for cols in stages[0]]


def random_columns(n: int, k: int, seed: int) -> torch.Tensor:
    """k of n columns drawn uniformly (ascending), reproducible from `seed`."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:k].sort().values

