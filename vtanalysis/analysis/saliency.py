"""Token scores against object masks (AdaFV Sec. 3, Fig. 2-4, 8; appendix A).

Scoring rules, each a score per image token of one sample ([n_image_tokens]):
    cls            visual saliency: the vision tower's [CLS] attention at the projector's feature
                   layer, head-mean (`prune.vision.VisionCapture`; FasterVLM's score)
    t2i-cosine     normalised cosine: max_t softmax_n(100 cos(x_t, v_n))           (AdaFV eq. 4)
    t2i-inner      normalised inner product: max_t softmax_n(x_t . v_n)            (AdaFV Fig. 3)
    llm-attention  the last prompt token's attention over image tokens at `layer` (FastV's score)
with x_t the LLM input embeddings of the text after the image and v_n those of the image tokens.

A token is relevant when more than half of its patch lies inside the object mask (the paper's
50% rule). Per sample and rule we report the ROC AUC of score vs relevance (1: every relevant
token outranks every other; 0.5: chance), `first_relevant` (N when the N-th best token is the
first relevant one, Fig. 4) and `tokens_to_cover` (how many best tokens include every relevant
one). Samples without a relevant token are skipped and counted.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from tqdm.auto import tqdm

from ..collect.record import record_attention
from ..errors import VTAError
from ..models.images import load_image
from ..prune.methods.adafv import t2i_scores
from ..prune.vision import VisionCapture, require_cls
from .._core.scoped import scoped
from .mask_attention import token_fractions

RULES = ("cls", "t2i-cosine", "t2i-inner", "llm-attention")


def relevant_tokens(vlm, layout, mask: np.ndarray, threshold: float = 0.5) -> torch.Tensor:
    """[n_image_tokens] bool: the token's patch is more than `threshold` inside `mask` [H, W]."""
    return token_fractions(vlm, layout, mask) > threshold


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC = P(score of a relevant token > score of an irrelevant one), ties counting 1/2
    (the Mann-Whitney U statistic from average ranks). NaN when either class is empty."""
    from scipy.stats import rankdata

    scores = torch.as_tensor(scores, dtype=torch.float64).cpu().numpy()
    labels = torch.as_tensor(labels, dtype=torch.bool).cpu().numpy()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)  # ties get their average rank
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def first_relevant(scores: torch.Tensor, labels: torch.Tensor) -> int:
    """N such that keeping the N best-scored tokens first includes a relevant one (ties count against)."""
    best = scores[labels].max()
    return int((scores[~labels] >= best).sum()) + 1


def tokens_to_cover(scores: torch.Tensor, labels: torch.Tensor) -> int:
    """How many best-scored tokens must be kept to include every relevant one (ties count against)."""
    worst = scores[labels].min()
    return int((scores[~labels] >= worst).sum()) + int(labels.sum())


def inner_product_scores(text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
    """max_t softmax_n(x_t . v_n): [T, D], [N, D] -> [N] (the un-normalised counterpart of eq. 4)."""
    return torch.softmax(text_embeds.float() @ image_embeds.float().T, dim=-1).max(dim=0).values


def token_scores(vlm, batch, *, rules=RULES, layer: int = 2) -> list[dict[str, torch.Tensor]]:
    """Every rule's scores for each sample of a prepared batch, from one prefill stopped after `layer`.

    Returns per sample {rule: [n_image_tokens]} (LLaVA-NeXT newline columns are NaN for `cls`).
    """
    unknown = set(rules) - set(RULES)
    if unknown:
        raise VTAError(f"unknown scoring rule(s) {sorted(unknown)}; rules: {RULES}.")
    if "cls" in rules:
        require_cls(vlm, "cls saliency")
    layer = vlm.check_layer(layer)
    grabbed = {}

    def grab(_module, _args, kwargs):
        grabbed["embeds"] = kwargs["inputs_embeds"].detach()

    # the vision tower is watched only for [CLS] saliency (towers without [CLS] may not be reachable)
    watch = VisionCapture(vlm) if "cls" in rules else contextlib.nullcontext()
    with scoped(vlm.adapter.language_model(vlm.model), "pre", grab), watch as capture:
        record = record_attention(vlm, batch, layers=[layer])
        cls = capture.columns(batch) if "cls" in rules else None
    out = []
    for b, lay in enumerate(batch.layouts):
        x = grabbed["embeds"][b]
        text, image = x[lay.text_positions.to(x.device)].cpu(), x[lay.image_positions.to(x.device)].cpu()
        every = {"t2i-cosine": lambda: t2i_scores(text, image), "t2i-inner": lambda: inner_product_scores(text, image),
                 "llm-attention": lambda: record[b].last_row[0].float().cpu(), "cls": lambda: cls[b][0]}
        out.append({rule: every[rule]() for rule in rules})
    return out


def score_against_masks(vlm, samples, masks: list[np.ndarray], *, rules=RULES, layer: int = 2,
                        batch_size: int = 8, keep_scores: bool = False, progress: bool = True) -> dict:
    """AUC, first-relevant and cover counts per sample and rule, and their means per rule.

    Args:
        samples: `Sample`s; masks: one [H, W] bool object mask per sample, in image pixels.
    Returns:
        {"rows": [{"id", "n_image_tokens", "n_relevant", "<rule>/auc", "<rule>/first_relevant",
        "<rule>/tokens_to_cover"[, "scores": {rule: [n_image_tokens]} with keep_scores]}, ...],
        "mean": {"<rule>/<stat>": mean over rows}, "skipped": ids}
    """
    if len(samples) != len(masks):
        raise VTAError(f"{len(samples)} samples but {len(masks)} masks; pass one mask per sample.")
    rows, skipped = [], []
    for i in tqdm(range(0, len(samples), batch_size), desc="saliency vs masks", disable=not progress):
        chunk, chunk_masks = samples[i:i + batch_size], masks[i:i + batch_size]
        batch = vlm.prepare([load_image(s.image) for s in chunk], [s.question for s in chunk])
        for s, m, lay, scores in zip(chunk, chunk_masks, batch.layouts, token_scores(vlm, batch, rules=rules, layer=layer)):
            labels = relevant_tokens(vlm, lay, m)
            real = ~torch.isnan(scores.get("cls", torch.zeros(len(labels))))  # drop NeXT newline columns
            labels = labels & real
            if not labels.any():
                skipped.append(s.id)
                continue
            row = {"id": s.id, "type": s.type, "n_image_tokens": int(real.sum()), "n_relevant": int(labels.sum())}
            for rule, sc in scores.items():
                sc, lab = sc[real], labels[real]
                row[f"{rule}/auc"] = roc_auc(sc, lab)
                row[f"{rule}/first_relevant"] = first_relevant(sc, lab)
                row[f"{rule}/tokens_to_cover"] = tokens_to_cover(sc, lab)
            if keep_scores:
                row["scores"] = {rule: [round(float(x), 7) for x in sc[real]] for rule, sc in scores.items()}
            rows.append(row)
    return score_summary(rows, skipped, layer)


def score_summary(rows: list[dict], skipped: list[str], layer: int) -> dict:
    """`score_against_masks`'s result from its rows: the per-rule means over `rows` (NaN ignored).
    Parts scored by several processes, their rows and skipped ids concatenated in order, give the
    one-process result."""
    stats = [k for k in (rows[0] if rows else {}) if "/" in k and k != "scores"]
    mean = {k: float(np.nanmean([r[k] for r in rows])) for k in stats}
    return {"rows": rows, "mean": mean, "skipped": skipped, "layer": layer}
