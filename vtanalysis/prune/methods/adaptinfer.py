"""AdaptInfer (Zhang et al.; facts from the authors' public code, see METHODS.md): dynamic
text-guided scoring of image tokens at each pruning layer, from that layer's own attention.

Text prior per head h, for text token j in T (every token after the image block):
    w_h(j) = sum_{i in T} A_h[i, j] + sum_{i in T} A_h[j, i] - A_h[j, j]
Image score:
    s(v) = sum_h sum_{j in T} w_h(j) * A_h[j, v]
with A_h the causal softmax attention of head h at the pruning layer (no head averaging, no
normalisation). LLaVA-1.5-7B schedule: prune after layers 1, 10, 20; Qwen2-VL(-2B, 28 layers):
prune after layers 0, 9, 19 keeping 0.5 / 0.6 / 0.3 of the tokens still there. Positions renumbered.
"""
from __future__ import annotations

import torch
from ...errors import VTAError
from ..budget import scale_to_average, table_counts
from ..plans import budget_tokens, scaled_layers
from . import fastv
from ..registry import Method, Need, register

SCHEDULE_LAYERS = (1, 10, 20)
# Kept image tokens per stage for LLaVA-1.5-7B by average budget (authors' presets), defined on
# LLaVA-1.5's image-token count.
PRESET_IMAGE_TOKENS = 576  # ok-literal: the token count the published presets were made for
PRESETS_7B = {128: (290, 72, 18), 64: (133, 27, 3), 48: (80, 24, 2), 32: (40, 12, 0)}
PRESETS_13B = {128: (300, 94, 30), 64: (148, 40, 5)}
# Qwen2-VL-2B (QWEN_DEPTH layers): prune after these layers, each keeping a ratio of the current count.
QWEN_SCHEDULE_LAYERS = (0, 9, 19)
QWEN_RATIOS = (0.5, 0.6, 0.3)
QWEN_DEPTH = 28  # ok-literal: Qwen2-VL-2B's decoder depth, the schedule's reference


def chained_counts(n: int, ratios) -> list[int]:
    """Counts of a schedule whose ratios are relative to the current count: int(n * r1), then
    int(that * r2), ... (the authors' Qwen2-VL rule)."""
    out = []
    for r in ratios:
        n = int(n * r + 1e-9)
        out.append(n)
    return out


def authors_average(n: int, stages: list[tuple[int, int]], depth: int) -> float:
    """The average image tokens per decoder layer as AdaptInfer's authors count their budgets: a
    stage's count from its pruning layer on (the layer before the first one that sees the kept set).
    It reproduces the published presets: 290/72/18 after layers 1/10/20 of 32 on PRESET_IMAGE_TOKENS is 128.8
    (budget 128), 133/27/3 is 65.0 (64), 80/24/2 is 48.8 (48), 40/12/0 is 33.0 (32)."""
    from ..budget import average_tokens

    return average_tokens(n, [(layer - 1, count) for layer, count in stages], depth)


def text_prior(attn_tt: torch.Tensor, mix: float = 1.0) -> torch.Tensor:
    """w_h(j) from text->text attention [H, T, T] (rows = queries). Returns [H, T].

    `mix` = lambda of the optional uniform mix lambda * w + (1 - lambda) * mean(w), where mean(w) is
    one scalar over every head and text token (as in the authors' code; not a per-head mean).
    """
    w = attn_tt.sum(dim=1) + attn_tt.sum(dim=2) - torch.diagonal(attn_tt, dim1=1, dim2=2)
    if mix != 1.0:
        w = mix * w + (1 - mix) * w.mean()
    return w


def scores_from_rows(attn_tt: torch.Tensor, attn_tv: torch.Tensor, mix: float = 1.0) -> torch.Tensor:
    """s(v) from per-head text rows: attn_tt [H, T, T] and attn_tv [H, T, V]. Returns [V]."""
    w = text_prior(attn_tt.float(), mix)
    return torch.einsum("ht,htv->v", w, attn_tv.float())


def scores(attn: torch.Tensor, text_idx: torch.Tensor, image_idx: torch.Tensor, mix: float = 1.0) -> torch.Tensor:
    """AdaptInfer image-token scores from one layer's full attention.

    Args:
        attn: [H, S, S] causal softmax attention of the pruning layer (rows = queries).
        text_idx: [T] positions of the text tokens.
        image_idx: [V] positions of the (still kept) image tokens.
    Returns:
        [V] scores; keep the top-k.
    """
    rows = attn[:, text_idx]
    return scores_from_rows(rows[:, :, text_idx], rows[:, :, image_idx], mix)


def adaptinfer_plan(vlm, n_image, keep, layers=None, counts=None, ratios=None, **_):
    """AdaptInfer's multi-stage schedule.

    LLaVA (default): prune after layers 1, 10, 20 (stages start at 2, 11, 21; scaled to other
    depths) with the authors' LLaVA-1.5-7B per-stage counts for average budgets 128, 64, 48 and 32
    of `PRESET_IMAGE_TOKENS` tokens. Qwen2-VL: prune after layers 0, 9, 19 (of 28,
    scaled to other depths) with the authors' ratios 0.5 / 0.6 / 0.3 of the current count
    (`chained_counts`). `ratios=` gives the counts by that rule directly (keep unused).
    `keep` sets the budget B, the image-token count averaged over the decoder layers as the authors
    count it (`authors_average`, which reproduces their presets: 290/72/18 averages
    128.8). A published budget on the published geometry uses the preset as published (Qwen2-VL:
    B equal to the ratios' own average); otherwise the preset (LLaVA: nearest in share) is scaled,
    capped at n_image, until its average equals B (bisection).
    `counts` overrides the per-stage kept counts; `layers` the stage layers.
    """
    qwen = getattr(getattr(vlm, "adapter", None), "mrope", False)  # Qwen2-VL's M-RoPE family
    if layers is not None:
        stage_layers = list(layers)
    elif qwen:
        stage_layers = scaled_layers(vlm, tuple(l + 1 for l in QWEN_SCHEDULE_LAYERS), QWEN_DEPTH)
    else:
        stage_layers = scaled_layers(vlm, tuple(l + 1 for l in SCHEDULE_LAYERS))

    def average(c):
        return authors_average(n_image, list(zip(stage_layers, c)), vlm.num_layers)

    if counts is None and ratios is not None:
        counts = chained_counts(n_image, ratios)
    if counts is None and qwen:
        preset = chained_counts(n_image, QWEN_RATIOS[: len(stage_layers)])
        budget = budget_tokens(keep, n_image)
        counts = preset if abs(average(preset) - budget) < 0.5 else scale_to_average(preset, budget, n_image, average)
    elif counts is None:
        presets = {b: c[: len(stage_layers)] for b, c in PRESETS_7B.items()}
        counts = table_counts(presets, PRESET_IMAGE_TOKENS, budget_tokens(keep, n_image), n_image,
                              vlm.num_layers, average)
    if len(counts) != len(stage_layers):
        raise VTAError(f"AdaptInfer got {len(counts)} stage counts for {len(stage_layers)} stage layers.")
    counts = [min(c, n_image) for c in counts]
    if any(b > a for a, b in zip(counts, counts[1:])):
        raise VTAError(f"AdaptInfer stage counts must not grow: {counts}.")
    return list(zip(stage_layers, counts))



def choose_adaptinfer(inputs, keep, stage):
    scores = scores_from_rows(inputs.text_to_text, inputs.text_to_image)
    return fastv.select(scores, keep)



register(Method(name="adaptinfer", summary="AdaptInfer: text-prior-weighted attention, multi-stage schedule",
                where="llm", needs=(Need.TEXT_ROWS,), choose=choose_adaptinfer, plan=adaptinfer_plan,
                positions="renumber"))
