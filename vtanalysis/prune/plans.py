"""Helpers that method files build their plans and choosers from.

Plans: `single_stage` (one stage at layer K), `pre_stage` (before the LLM), `no_stage`,
`scaled_layers` (a 32-layer schedule mapped onto this model's depth), `budget_tokens`.
Choosers: `among_patches` (pre-LLM per-crop budgets, newlines kept) and `sample_noise` (a
per-sample random draw on the model's device).
"""
from __future__ import annotations

import torch

from ..errors import VTAError
from ..rules.similarity import cosine_matrix  # noqa: F401 (methods import it from here)
from .budget import keep_count
from .engine import split_newlines


def single_stage(default_layer: int, rounding: str = "floor"):
    """One stage at `layer` (default `default_layer`, clipped to the model's depth) keeping `keep`
    tokens (a ratio becomes a count by the authors' `rounding`, see `budget.keep_count`)."""
    def plan(vlm, n_image, keep, layer=None, **_):
        k = layer if layer is not None else min(default_layer, vlm.num_layers - 1)
        return [(k, keep_count(keep, n_image, rounding))]
    return plan


def no_stage(vlm, n_image, keep, **_):
    return []


def scaled_layers(vlm, layers: tuple[int, ...], of: int = 32) -> list[int]:
    """A schedule for an `of`-layer model mapped proportionally onto this model's depth (>= 1,
    increasing, unique)."""
    depth = vlm.num_layers
    if depth == of:
        return list(layers)
    out = []
    for l in layers:
        k = min(max(1, round(l * depth / of)), depth - 1)
        if not out or k > out[-1]:
            out.append(k)
    return out


def budget_tokens(keep: float | int, n_image: int) -> float:
    """A multi-stage method's budget: the average image tokens per decoder layer (keep validated)."""
    keep_count(keep, n_image)
    return n_image * keep if isinstance(keep, float) else float(keep)


def pre_stage(rounding: str = "floor"):
    """A pre-LLM method: every decoder layer sees the kept tokens only."""
    def plan(vlm, n_image, keep, **_):
        return [(0, keep_count(keep, n_image, rounding))]
    return plan


def sample_noise(inputs, seed: int) -> torch.Tensor:
    """[n] uniform noise, on the model's device, drawn for this sample alone: sample b of a batch
    draws with seed + b (so `evaluate`, passing seed + the chunk's first index, gives every
    sample of a dataset its own draw at any batch size; the same seed reproduces it)."""
    device = inputs.columns.device
    g = torch.Generator(device=device).manual_seed(seed + inputs.sample)
    return torch.rand(len(inputs.columns), generator=g, device=device)


def among_patches(pick):
    """A pre-LLM chooser with the authors' per-crop budget: each crop (an image; a LLaVA-NeXT base
    image or tile) keeps `crop_keep` of its patches by `pick(inputs, patches, k, **knobs)` -> indices
    into `patches`; LLaVA-NeXT newline tokens are kept on top. Without crops (a chooser called by
    hand) the patches are one crop keeping `keep` minus the newlines. The result is in sequence
    order (a token `pick` repeats, as AdaFV's authors do with dedupe=False, sits next to itself)."""
    def choose(inputs, keep, stage, **knobs):
        newlines, patches = split_newlines(inputs)
        crops = inputs.crops if inputs.crops is not None else [patches]
        budgets = inputs.crop_keep if inputs.crop_keep is not None else [keep - len(newlines)]
        picked = torch.cat([newlines, *[crop[pick(inputs, crop, k, **knobs)] for crop, k in zip(crops, budgets) if k > 0]])
        rank = inputs.positions[picked] if inputs.positions is not None else picked
        return picked[torch.argsort(rank, stable=True)]
    return choose


def choose_first(inputs, keep, stage):
    """The first `keep` image tokens (`none` keeps all of them; VTW withdraws all: keep = 0)."""
    return torch.arange(keep, device=inputs.columns.device)


def rule_dtype(authors_dtype) -> torch.dtype | None:
    """The dtype a selection rule computes in, from an `authors_dtype` knob: None (our float32 rule)
    for False / None; a `torch.dtype`, or its name ("float16", "bfloat16"), as given. True means the
    model's dtype, which `prune.run` resolves (`resolve_authors_dtype`) before calling the chooser."""
    if authors_dtype is None or authors_dtype is False:
        return None
    if isinstance(authors_dtype, torch.dtype):
        return authors_dtype
    if isinstance(authors_dtype, str) and isinstance(getattr(torch, authors_dtype, None), torch.dtype):
        return getattr(torch, authors_dtype)
    if authors_dtype is True:
        raise VTAError("authors_dtype=True means the model's dtype, which prune.run resolves; calling a chooser "
                       "by hand, pass the dtype itself, e.g. authors_dtype=torch.float16.")
    raise VTAError(f"authors_dtype takes True (the model's dtype, as the authors' code computes), False (our "
                   f"float32 rule) or a dtype such as 'float16', not {authors_dtype!r}.")


def resolve_authors_dtype(vlm, knobs: dict) -> dict:
    """`Method.resolve_knobs` of the methods with an `authors_dtype` knob: True becomes the model's dtype."""
    if knobs.get("authors_dtype") is True:
        return {**knobs, "authors_dtype": vlm.dtype}
    return knobs
