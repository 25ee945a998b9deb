"""AdaptPrune's Table 5 alternatives to its adaptive NMS (Luan et al.), all at layer K = 2 on the
last-row attention of layer K-1 (head-mean), as the paper's ablation runs them: random tokens,
a random or the best token per 3x3 block then top-k, 3x3 average-pooled scores, every other token
of the top 2k, the last k tokens, and single-layer FitPrune (ywh187/FitPrune's score at one layer).

Fidelity (FitPrune): run against the authors' released code on shared inputs (issue 41), the
tokens removed at a layer equal theirs on every case tried (ywh187/FitPrune,
`LLaVA_1.5/llava/model/language_model/modeling_llama.py`, `LlamaAttention.forward`: the head max
of the attention, then (sum over text) x (mean over image), the lowest removed). Difference: one
layer at K = 2 with AdaptPrune's budget, as AdaptPrune's Table 5 runs it, not the authors' fitted
per-layer removal schedule.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from . import adaptprune, fastv
from ..plans import sample_noise, single_stage
from ..registry import Method, Need, register


def choose_random(inputs, keep, stage, seed=0):
    """Table 5 'random': `keep` tokens drawn uniformly, per sample (`sample_noise`)."""
    return torch.topk(sample_noise(inputs, seed), keep).indices.sort().values


def choose_last(inputs, keep, stage):
    n = len(inputs.columns)
    return torch.arange(n - keep, n, device=inputs.columns.device)


def _on_grids(inputs, transform):
    """Apply `transform(map [h, w]) -> [h, w]` to last-row scores grid by grid (other columns unchanged)."""
    scores = inputs.last_row.clone()
    for start, h, w in inputs.grids or []:
        scores[start:start + h * w] = transform(scores[start:start + h * w].view(h, w)).flatten()
    return scores


def choose_avgpool(inputs, keep, stage):
    """Table 5: 3x3 stride-1 average pooling of the scores, then top-k."""
    pooled = _on_grids(inputs, lambda m: F.avg_pool2d(m[None, None], 3, 1, 1, count_include_pad=False)[0, 0])
    return fastv.select(pooled, keep)


def _one_per_block(inputs, keep, values):
    """Table 5: one candidate per 3x3 block (the cell where `values` peaks, first in row-major
    order on ties), then the top-k candidates by score. values: [n] over the current image tokens."""
    scores = inputs.last_row
    candidates = torch.zeros_like(scores, dtype=torch.bool)
    blocks = 0
    for start, h, w in inputs.grids or []:
        ph, pw = -h % 3, -w % 3  # pad partial blocks at the bottom/right edge with -inf
        grid = F.pad(values[start:start + h * w].view(1, 1, h, w), (0, pw, 0, ph), value=float("-inf"))
        _, idx = F.max_pool2d(grid, 3, 3, return_indices=True)  # flat index into the padded plane per block
        idx = idx.flatten()
        candidates[start + idx // (w + pw) * w + idx % (w + pw)] = True
        blocks += idx.numel()
    # fewer blocks than the budget: fill by score (run always, possibly for 0 tokens: same ops at every keep)
    rest = fastv.select(scores.masked_fill(candidates, float("-inf")), max(0, keep - blocks))
    candidates[rest] = True
    return fastv.select(scores.masked_fill(~candidates, float("-inf")), keep)


def choose_max_block(inputs, keep, stage):
    return _one_per_block(inputs, keep, inputs.last_row)


def choose_random_block(inputs, keep, stage, seed=0):
    """Table 5: a random token per 3x3 block (`sample_noise`), then the top-k of those by score."""
    return _one_per_block(inputs, keep, sample_noise(inputs, seed))


def choose_skip(inputs, keep, stage):
    """Table 5 'skip': every other token of the top-2k ranking."""
    order = torch.argsort(inputs.last_row, descending=True)
    picks = order[: 2 * keep: 2]
    if len(picks) < keep:
        picks = torch.cat([picks, order[1::2][: keep - len(picks)]])
    return picks.sort().values


def choose_fitprune(inputs, keep, stage):
    """Single-layer FitPrune (AdaptPrune Table 5), the authors' rule (ywh187/FitPrune,
    `LlamaAttention.forward`): take the max over heads of every attention entry first, then
    score(v) = (sum over text queries of hm[t, v]) x (mean over image queries of hm[u, v]);
    the lowest scores are dropped."""
    cross = inputs.text_to_image.amax(0).sum(0)       # [n]: head-max, summed over the text queries
    self_term = inputs.image_to_image.amax(0).mean(0)  # [n]: head-max, averaged over the image queries
    return fastv.select(cross * self_term, keep)



for _m in [
    Method(name="random", summary="Table 5: random tokens (per-sample draws from seed)", where="llm", needs=(),
           choose=choose_random, plan=single_stage(adaptprune.LAYER), choose_knobs=("seed",)),
    Method(name="random-3x3", summary="Table 5: a random token per 3x3 block, then top-k", where="llm",
           needs=(Need.LAST_ROW,), choose=choose_random_block, plan=single_stage(adaptprune.LAYER), choose_knobs=("seed",)),
    Method(name="max-3x3", summary="Table 5: the best token per 3x3 block, then top-k", where="llm",
           needs=(Need.LAST_ROW,), choose=choose_max_block, plan=single_stage(adaptprune.LAYER)),
    Method(name="avgpool-3x3", summary="Table 5: 3x3 average-pooled scores, then top-k", where="llm",
           needs=(Need.LAST_ROW,), choose=choose_avgpool, plan=single_stage(adaptprune.LAYER)),
    Method(name="skip", summary="Table 5: every other token of the top 2k", where="llm", needs=(Need.LAST_ROW,),
           choose=choose_skip, plan=single_stage(adaptprune.LAYER)),
    Method(name="last-k", summary="Table 5: the last k image tokens", where="llm", needs=(), choose=choose_last,
           plan=single_stage(adaptprune.LAYER)),
    Method(name="fitprune", summary="Table 5: single-layer FitPrune (text->image x image->image attention, head max)",
           where="llm", needs=(Need.TEXT_ROWS, Need.IMAGE_ROWS), choose=choose_fitprune,
           plan=single_stage(adaptprune.LAYER)),
]:
    register(_m)
