"""`agreement`: how much of the causal oracle a method's selection recovers (arXiv 2502.11501 asks
pruning papers to beat random and to show what they keep; this scores it on the causal effect).

For a registered method at a budget, per sample (effects of keeping only a set, the rest dropped
from `layer` on; `ablate` defines them):

    share     (E_random - E_method) / (E_random - E_oracle): 1 = as good as the oracle, 0 = random
    recall    |method ∩ oracle| / |oracle|
    spearman  rank correlation between the method's token order and `importance` (token order: the
              smallest of the budgets 1/8, 2/8, .., 8/8 of the image at which the method keeps it;
              most valued first; average ranks for ties)
    deletion  effects of dropping the method's selection at those budgets (most valued first):
              a good order makes this rise fast; `deletion_area` is its mean over the budgets
    insertion effects of keeping only the selection at those budgets: a good order makes this fall
              fast; `insertion_area` is its mean
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import VTAError
from .ablation import Reference, explained
from .importance import importance as token_importance
from .oracle import effects_of_sets, search
from .replay import record
from .selections import method_columns, random_columns

BUDGETS = tuple(i / 8 for i in range(1, 9))


@dataclass
class AgreementResult:
    """Per sample [B] tensors (CPU) comparing a method's selection with the oracle's and random ones.

    Attributes:
        method, keep, layer, measure: what was measured.
        effect, random, oracle: effects of keeping only the method's / random (seed mean) / oracle set.
        share: share of the oracle recovered (see the module); NaN where the oracle is no better than random.
        recall: share of the oracle's tokens the method keeps.
        spearman: rank correlation of the method's token order with `importance`.
        deletion, insertion: [B, len(budgets)] effects along the method's order.
        deletion_area, insertion_area: their means over the budgets.
        budgets: the budget fractions of the curves.
    """
    method: str
    keep: float | int
    layer: int
    measure: str
    effect: torch.Tensor
    random: torch.Tensor
    oracle: torch.Tensor
    share: torch.Tensor
    recall: torch.Tensor
    spearman: torch.Tensor
    deletion: torch.Tensor
    insertion: torch.Tensor
    deletion_area: torch.Tensor
    insertion_area: torch.Tensor
    budgets: tuple


def ranks(values: torch.Tensor) -> torch.Tensor:
    """Average ranks (1 = smallest) of a 1-D tensor, ties sharing their mean rank."""
    order = values.argsort()
    ranked = torch.empty_like(values, dtype=torch.float)
    ranked[order] = torch.arange(1, len(values) + 1, dtype=torch.float)
    for value in values.unique():
        same = values == value
        ranked[same] = ranked[same].mean()
    return ranked


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation of two 1-D tensors (NaN when either is constant)."""
    ra, rb = ranks(a.float()), ranks(b.float())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return (ra * rb).sum() / (ra.norm() * rb.norm())


def agreement(vlm, batch, method: str, keep: float | int, *, layer: int = 0, seeds: int = 5, measure: str = "kl",
              target: list[str] | None = None, ref: Reference | None = None, chunk: int | None = None,
              memory_mb: float = 1024, max_new_tokens: int = 8, oracle_sets: list[torch.Tensor] | None = None,
              importance_scores: torch.Tensor | None = None, **knobs) -> AgreementResult:
    """Score `method`'s selection at `keep` against the causal oracle, random selections and `importance`.

    Args:
        vlm, batch: a `VLM` and its `VLMInputs`.
        method, keep, **knobs: a registered method and its budget, as in `prune.run`.
        layer: the layer from which the tokens not kept are dropped (0: never enter the LLM).
        seeds: random selections per sample.
        measure: "kl" or "logprob_drop".
        target, ref, chunk, memory_mb, max_new_tokens: as in `importance`.
        oracle_sets: per sample, the oracle's kept columns found before (`oracle(..., keep, layer)` at
            the method's kept count), reused across methods; default: searched here.
        importance_scores: [B, n] `importance(vlm, batch, "drop", layer, measure=measure)` computed
            before, reused across methods; default: computed here.
    Returns:
        `AgreementResult`.
    """
    return agreements(vlm, batch, [method], keep, layer=layer, seeds=seeds, measure=measure, target=target, ref=ref,
                      chunk=chunk, memory_mb=memory_mb, max_new_tokens=max_new_tokens, oracle_sets=oracle_sets,
                      importance_scores=importance_scores, **knobs)[method]


def agreements(vlm, batch, methods: list[str], keep: float | int, *, layer: int = 0, seeds: int = 5,
               measure: str = "kl", target: list[str] | None = None, ref: Reference | None = None,
               chunk: int | None = None, memory_mb: float = 1024, max_new_tokens: int = 8,
               oracle_sets: list[torch.Tensor] | None = None, importance_scores: torch.Tensor | None = None,
               **knobs) -> dict[str, AgreementResult]:
    """`agreement` of several methods at once: {method: AgreementResult}, each equal to its `agreement`.

    Per sample, every kept set of one size (the methods' selections, the oracle's, the random ones,
    and the insertion and deletion sets along each method's order) is replayed together, once; the
    random sets and the oracle depend only on the sample and the kept count, so methods keeping the
    same count share them. `oracle_sets`, when given, must keep what every method keeps; `knobs` go
    to every method."""
    if len(batch) == 0:
        raise VTAError("the batch is empty: prepare at least one sample.")
    if not methods:
        return {}
    layer = vlm.check_layer(layer, "ablation layer")
    ref = explained(vlm, batch, ref, target, max_new_tokens)
    mine = {m: method_columns(vlm, batch, m, keep, **knobs) for m in methods}
    along = {m: [method_columns(vlm, batch, m, fraction, **knobs) for fraction in BUDGETS] for m in methods}
    scores = importance_scores if importance_scores is not None else \
        token_importance(vlm, batch, "drop", layer, measure=measure, ref=ref, chunk=chunk, memory_mb=memory_mb)
    size, steps = len(batch), len(BUDGETS)
    fields = {m: {name: torch.zeros(size) for name in ("effect", "random", "oracle", "recall", "spearman")}
              for m in methods}
    deletion = {m: torch.zeros(size, steps) for m in methods}
    insertion = {m: torch.zeros(size, steps) for m in methods}
    with torch.inference_mode():
        recorded = record(vlm, batch, ref, layer)
        for b, lay in enumerate(batch.layouts):
            n, rec = lay.n_image_tokens, recorded[b]
            sets, found, at = [mine[m][b] for m in methods], {}, {}  # at[k]: where size k's oracle, then random sets sit
            for k in sorted({len(mine[m][b]) for m in methods}):
                if oracle_sets is not None:
                    found[k] = oracle_sets[b].cpu()
                    if len(found[k]) != k:
                        wrong = next(m for m in methods if len(mine[m][b]) == k)
                        raise VTAError(f"sample {b}: the given oracle set keeps {len(found[k])} tokens, {wrong} keeps "
                                       f"{k}; search the oracle at the method's count.")
                else:
                    found[k] = search(vlm, rec, lay, k, "drop", ref, b, start=layer, measure=measure, chunk=chunk,
                                      memory_mb=memory_mb).cpu()  # ok-host: once per sample and count
                at[k] = len(sets)
                sets += [found[k]] + [random_columns(n, k, seed=1000 * b + s) for s in range(seeds)]
            curves = len(sets)  # then, per method and budget: insertion (keep only the selection), deletion (the rest)
            for m in methods:
                for j in range(steps):
                    selected = torch.zeros(n, dtype=torch.bool)
                    selected[along[m][j][b]] = True
                    sets += [selected.nonzero().flatten(), (~selected).nonzero().flatten()]  # ok-host: host tensors
            out = effects_of_sets(vlm, rec, sets, ref, b, start=layer, measure=measure, chunk=chunk,
                                  memory_mb=memory_mb)
            for i, m in enumerate(methods):
                k, f = len(mine[m][b]), fields[m]
                f["effect"][b], f["oracle"][b], f["random"][b] = out[i], out[at[k]], out[at[k] + 1:at[k] + 1 + seeds].mean()
                first = curves + 2 * steps * i
                insertion[m][b], deletion[m][b] = out[first:first + 2 * steps:2], out[first + 1:first + 2 * steps:2]
                f["recall"][b] = torch.isin(found[k], mine[m][b]).float().mean()
                first_kept = torch.full((n,), float(steps))
                for j in reversed(range(steps)):
                    first_kept[along[m][j][b]] = float(j)
                f["spearman"][b] = spearman(-first_kept, scores[b, :n])
    results = {}
    for m in methods:
        f = fields[m]
        gap = f["random"] - f["oracle"]
        share = torch.where(gap > 0, (f["random"] - f["effect"]) / gap, torch.full_like(gap, float("nan")))
        results[m] = AgreementResult(m, keep, layer, measure, f["effect"], f["random"], f["oracle"], share,
                                     f["recall"], f["spearman"], deletion[m], insertion[m], deletion[m].mean(1),
                                     insertion[m].mean(1), BUDGETS)
    return results
