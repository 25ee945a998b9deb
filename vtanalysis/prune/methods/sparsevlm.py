"""SparseVLM (Zhang et al. 2024, "SparseVLM: visual token sparsification for efficient
vision-language model inference"; authors' code Gumpest/SparseVLMs), prune only.

Text raters are chosen once from the LLM input embeddings (`sparsevlm_raters`); at each of three
layers (2, 6, 15 of 32 in the authors' code, pruning their outputs) the raters' head-mean
attention rows over the image tokens are averaged and the top-k kept; the per-stage counts follow
the authors' tables for each published budget. Not reproduced: the recycling of pruned tokens into
merged ones. Positions are renumbered.

Fidelity: run against the authors' released code on shared inputs (issue 41), the first stage's
raters and kept set equal theirs on every case tried (Gumpest/SparseVLMs,
`llava/model/language_model/score.py`, `attn_postprocess_topk`, with the raters of
`modelling_sparse_llama.py`, `LlamaDynamicvitModel.forward`). The later stages differ by
design: the authors' recycled (merged) tokens re-enter the sequence, so their stages 2 and 3 rank
a different token set than ours.
"""
from __future__ import annotations

import torch
from ..budget import average_tokens, table_counts
from ..plans import budget_tokens, scaled_layers
from . import fastv
from ..registry import Method, Need, register


# SparseVLM's per-budget kept counts at its three pruning layers (authors' code), by the budget
# they are published for, on LLaVA-1.5's image tokens (SPARSEVLM_IMAGE_TOKENS).
SPARSEVLM_TABLES = {192: (300, 200, 110), 128: (303, 110, 36), 96: (238, 48, 26), 64: (66, 30, 17)}


SPARSEVLM_IMAGE_TOKENS = 576  # ok-literal: the token count the published tables were made for



def sparsevlm_plan(vlm, n_image, keep, layers=None, counts=None, **_):
    """SparseVLM (prune only). The authors score with layers 2, 6 and 15 (of 32) and prune their
    outputs, so the stages start at layers 3, 7 and 16. `keep` is the budget averaged over the
    decoder layers: a published budget (`SPARSEVLM_TABLES` on LLaVA-1.5's tokens, 32 layers) uses the authors'
    table as published; any other budget scales the table nearest in share until the average
    equals it. `counts` overrides the per-stage counts. The authors' recycling of pruned tokens
    into merged ones is not reproduced."""
    stage_layers = list(layers) if layers is not None else scaled_layers(vlm, (3, 7, 16))
    if counts is None:
        tables = {b: c[: len(stage_layers)] for b, c in SPARSEVLM_TABLES.items()}
        counts = table_counts(tables, SPARSEVLM_IMAGE_TOKENS, budget_tokens(keep, n_image), n_image, vlm.num_layers,
                              lambda c: average_tokens(n_image, list(zip(stage_layers, c)), vlm.num_layers))
    return list(zip(stage_layers, [min(c, n_image) for c in counts]))



def sparsevlm_raters(text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
    """SparseVLM's text raters (Gumpest/SparseVLMs, `LlamaDynamicvitModel.forward`), chosen once from
    the LLM input embeddings: r(t) = mean over image tokens v of softmax_over_text(v . t) (no scaling);
    raters are the text tokens with r above its mean. [T, D], [N, D] -> [T] bool. When no token is
    above the mean (all equal) every text token rates (the authors' code would have no raters)."""
    r = torch.softmax(image_embeds.float() @ text_embeds.float().T, dim=1).mean(0)
    raters = r > r.mean()
    return raters | ~raters.any()



def choose_sparsevlm(inputs, keep, stage):
    """SparseVLM rating (Gumpest/SparseVLMs, `attn_postprocess_topk`): the pruning layer's head-mean
    attention rows of the raters (`sparsevlm_raters`), averaged over raters, over the current image
    tokens; keep the top-k."""
    raters = sparsevlm_raters(inputs.text_embeds, inputs.image_embeds)
    weight = raters.float() / raters.sum()
    return fastv.select(weight @ inputs.text_to_image.mean(0), keep)



register(Method(name="sparsevlm", summary="SparseVLM, prune only: text raters' attention at 3 stages, positions "
                "renumbered", where="llm", needs=(Need.TEXT_ROWS, Need.EMBEDS), choose=choose_sparsevlm,
                plan=sparsevlm_plan, positions="renumber"))
