"""AdaFV (Han et al., "Rethinking Visual-Language Alignment...", Sec. 3.3, eqs. 4-11).

Two rankings of image tokens: T2I similarity (text-to-image cosine of the LLM's input
embeddings x 100, softmax over image tokens, max over text tokens, eq. 4) and visual saliency
(the vision tower's [CLS] attention at the projector's feature layer, head-mean = FasterVLM).
Each ranking is first guaranteed `min_share` of the budget (the authors' budget_thres = 0.25);
the rest is split k1 + k2 to maximise (sum of the next k1 T2I scores) x (sum of the next k2
saliency scores), searched exhaustively with prefix sums (eqs. 7-11). Runs before the LLM.
The fixed mixture (Sec. 4.1, eq. 3) is `select(cosine_scores(...), saliency, keep, min_share=0.5)`:
half the budget from each ranking.
"""
from __future__ import annotations

import torch
from ..engine import split_newlines
from ..plans import among_patches, pre_stage
from . import fastv
from ..registry import Method, Need, register


def cosine_scores(text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
    """Paper eq. 2 (the fixed mixture's T2I score): max over text tokens of cos(text, image). [T, D], [N, D] -> [N]."""
    t = torch.nn.functional.normalize(text_embeds.float(), dim=-1)
    v = torch.nn.functional.normalize(image_embeds.float(), dim=-1)
    return (t @ v.T).max(dim=0).values


def t2i_scores(text_embeds: torch.Tensor, image_embeds: torch.Tensor, temperature: float = 100.0) -> torch.Tensor:
    """Paper eq. 4: max over text tokens of softmax_over_images(100 * cos(text, image)).

    Args: text_embeds [T, D] (LLM input embeddings of the instruction), image_embeds [N, D]
    (projected image tokens). Returns [N].
    """
    t = torch.nn.functional.normalize(text_embeds.float(), dim=-1)
    v = torch.nn.functional.normalize(image_embeds.float(), dim=-1)
    return torch.softmax(temperature * (t @ v.T), dim=-1).max(dim=0).values


def split_budget(t2i_sorted: torch.Tensor, sal_sorted: torch.Tensor, remaining: int) -> torch.Tensor:
    """k1 in [0, remaining] maximising (sum of t2i_sorted[:k1]) * (sum of sal_sorted[:remaining-k1]) (eqs. 7-11).

    Returns a 0-dim LongTensor on the scores' device (no host round trip)."""
    device = t2i_sorted.device
    zero = torch.zeros(1, dtype=torch.float64, device=device)
    a = torch.cat([zero, t2i_sorted.double().cumsum(0)])
    b = torch.cat([zero, sal_sorted.double().cumsum(0)])
    k1 = torch.arange(remaining + 1, device=device)
    valid = (k1 < a.numel()) & (remaining - k1 < b.numel())
    value = a[k1.clamp(max=a.numel() - 1)] * b[(remaining - k1).clamp(0, b.numel() - 1)]
    return torch.argmax(torch.where(valid, value, -1.0))


def _ranks(order: torch.Tensor) -> torch.Tensor:
    """rank[i] = position of token i in `order` (the inverse permutation)."""
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank


def select(t2i: torch.Tensor, saliency: torch.Tensor, keep: int, *, min_share: float = 0.25,
           dedupe: bool = True) -> torch.Tensor:
    """Self-adaptive cross-modality attention mixture (SACMAM).

    Args:
        t2i: [N] T2I similarity scores.
        saliency: [N] visual saliency ([CLS] attention).
        keep: budget, 1 <= keep <= N.
        min_share: fraction of the budget each ranking gets first.
        dedupe: where both rankings pick the same token, give the freed slot to the next best of
            the two rankings in turn, T2I first (default; stronger than the authors'). False is the
            authors' code (JiayiV/AdaV, `LlavaLlamaForCausalLM.generate`): the two index lists are
            concatenated and sorted, so such a token enters the LLM twice.
    Returns:
        LongTensor [keep], ascending, on the scores' device; no duplicates unless dedupe=False.

    The turn-by-turn fill is computed in one pass: after the first picks, turn 2r offers the T2I
    ranking's next token r and turn 2r + 1 the saliency ranking's; a token joins at the first turn
    that offers it, so the kept set is the `keep` tokens whose first offer comes earliest.
    """
    n = t2i.numel()
    floor = int(keep * min_share)
    t_order = torch.argsort(t2i, descending=True)
    s_order = torch.argsort(saliency, descending=True)
    remaining = keep - 2 * floor
    k1 = split_budget(t2i[t_order[floor:]], saliency[s_order[floor:]], remaining)
    take_t, take_s = floor + k1, floor + remaining - k1
    if not dedupe:  # the first take_t of one ranking and take_s of the other, host-known total `keep`
        slots = torch.arange(keep, device=t2i.device)
        picks = torch.where(slots < take_t, t_order[slots.clamp(max=n - 1)], s_order[(slots - take_t).clamp(0, n - 1)])
        return picks.sort().values
    rank_t, rank_s = _ranks(t_order), _ranks(s_order)
    first_picks = (rank_t < take_t) | (rank_s < take_s)
    offer = torch.minimum(2 * (rank_t - take_t), 2 * (rank_s - take_s) + 1)
    offer = torch.where(first_picks, -1, offer)
    return torch.topk(-offer, min(keep, n)).indices.sort().values


def _t2i(inputs, patches, cosine=False):
    """T2I scores of `patches`, normalised over all the sample's patches (newlines excluded), as the
    authors' softmax runs over every image token of the sample; computed once per sample and stage."""
    name = "_cosine_scores" if cosine else "_t2i_scores"
    if getattr(inputs, name, None) is None:
        _, every = split_newlines(inputs)
        score = cosine_scores if cosine else t2i_scores
        full = torch.full((len(inputs.columns),), float("-inf"), device=inputs.columns.device)
        full[every] = score(inputs.text_embeds, inputs.image_embeds[every])
        setattr(inputs, name, full)
    return getattr(inputs, name)[patches]



def pick_t2i(inputs, patches, k):
    return fastv.select(_t2i(inputs, patches), k)



def pick_sacmam(inputs, patches, k, dedupe=True):
    return select(_t2i(inputs, patches), inputs.saliency[patches], k, dedupe=dedupe)



def pick_fixed_mixture(inputs, patches, k, dedupe=True):
    return select(_t2i(inputs, patches, cosine=True), inputs.saliency[patches], k, min_share=0.5, dedupe=dedupe)



register(Method(name="adafv", summary="AdaFV: self-adaptive mixture (SACMAM) of T2I similarity and [CLS] saliency, "
                "before the LLM", where="pre", needs=(Need.CLS, Need.EMBEDS), choose=among_patches(pick_sacmam),
                plan=pre_stage(), positions="renumber", choose_knobs=("dedupe",), ordered=True))
register(Method(name="adafv-fixed", summary="AdaFV fixed mixture (eq. 3): half the budget by cosine T2I, half by [CLS] "
                "saliency", where="pre", needs=(Need.CLS, Need.EMBEDS), choose=among_patches(pick_fixed_mixture),
                plan=pre_stage(), positions="renumber", choose_knobs=("dedupe",), ordered=True))
register(Method(name="adafv-t2i", summary="AdaFV part: T2I similarity only (eq. 4), before the LLM", where="pre",
                needs=(Need.EMBEDS,), choose=among_patches(pick_t2i), plan=pre_stage(), positions="renumber"))
