"""The causal statistics the figures and findings read (issue 39): the information horizon of some
methods (arXiv 2512.07580), attention knockout by layer window (arXiv 2411.18620), and each method's
agreement with the causal oracle at keep 0.1 (arXiv 2502.11501's "beat random, show what you keep").

Computed once per run on the first samples (the oracle search is the costly part: it runs on fewer)
and cached like the other statistics; `horizon`, `knockout` and `agreement` in `vtanalysis.causal`
define every number.
"""
from __future__ import annotations

import math

from .context import METHODS, Context, cached

KEEP = 0.1
HORIZON_METHODS = ("fastv", "adaptprune", "fastervlm", "divprune", "pool")
AGREEMENT_METHODS = tuple(m for m in METHODS if m != "random")  # random is what each is compared with
KNOCKOUT_EDGES = ("image->question", "image->last", "question->last", "image->text")
OBJECT_EDGE = "object->question"  # the queried object's tokens (data with object masks), 2411.18620's object level
SAMPLES = 16  # horizon and knockout
ORACLE_SAMPLES = 8  # agreement: one oracle search per sample
SEEDS = 5  # random selections per sample
ORACLE_STEP = 2  # tokens the oracle's greedy search adds per round (1 = exact greedy; 2 halves the rounds)


def knockout_window(depth: int) -> int:
    """Layers knocked out together: a quarter of the depth (2411.18620 uses 9 of 32), at least 1."""
    return max(1, round(depth / 4))


def causal_result(ctx: Context) -> dict:
    """{"horizon", "knockout", "agreement"}: per-sample numbers (JSON lists), cached per run."""
    params = {**ctx.key, "keep": KEEP, "samples_causal": SAMPLES, "oracle_samples": ORACLE_SAMPLES, "seeds": SEEDS,
              "oracle_step": ORACLE_STEP}
    return cached(ctx.cache, "causal", params, lambda: compute(ctx))


def _batches(ctx: Context, n: int):
    samples = ctx.samples[:n]
    for i in range(0, len(samples), ctx.batch_size):
        part = samples[i:i + ctx.batch_size]
        yield ctx.vlm.prepare([s.image for s in part], [s.question for s in part])


def _object_columns(ctx: Context, batches) -> list:
    """Per sample (in batch order): the image-token columns of the queried object (more than half of
    the token's patch inside the object's mask), or None where the data carry no mask for it."""
    from ..analysis.saliency import relevant_tokens
    from ..data.shapes import target_mask

    out, i = [], 0
    for batch in batches:
        for lay in batch.layouts:
            s = ctx.samples[i]
            i += 1
            if not (s.extra.get("targets") and s.extra.get("objects")):
                out.append(None)
                continue
            cols = relevant_tokens(ctx.vlm, lay, target_mask(s)).nonzero().flatten()
            out.append(cols if len(cols) else None)
    return out


def _runs(vlm, batch, method: str) -> bool:
    """Whether `method` runs on this model at KEEP (a method may refuse a family or a budget)."""
    from ..errors import VTAError
    from ..prune.run import select

    try:
        select(vlm, batch, method, KEEP)
    except VTAError:
        return False
    return True


def compute(ctx: Context) -> dict:
    from ..models.tower_reuse import sharing

    with sharing(ctx.vlm):  # every analysis of a batch reuses its vision tower's output
        return _compute(ctx)


def _compute(ctx: Context) -> dict:
    import torch

    from .. import causal
    from ..causal.agreement import BUDGETS
    from ..causal.horizon import MARGIN, first_no_better
    from ..causal.oracle import oracle_for_counts
    from ..causal.selections import method_columns
    from ..prune.budget import keep_count

    vlm = ctx.vlm
    first = next(_batches(ctx, 1))
    horizon_methods = [m for m in HORIZON_METHODS if _runs(vlm, first, m)]
    agreement_methods = [m for m in AGREEMENT_METHODS if _runs(vlm, first, m)]
    depth, k = vlm.num_layers, knockout_window(vlm.num_layers)
    starts = list(range(0, depth - k + 1))
    horizon = {m: {"effect": [], "random": [], "advantage": None, "horizon": None} for m in horizon_methods}
    knock = {e: [] for e in KNOCKOUT_EDGES}  # per edge: per sample, the effect at each window start
    batches = list(_batches(ctx, SAMPLES))
    objects = _object_columns(ctx, batches)  # per sample: the queried object's tokens, or None (no mask)
    if any(o is not None for o in objects):
        knock[OBJECT_EDGE] = []
    bar = _bar(ctx, len(batches) * (len(horizon_methods) + len(starts)) + min(ORACLE_SAMPLES, len(ctx.samples)),
               "causal: horizon, knockout, oracle")
    first_sample = 0
    for batch in batches:
        ref = causal.reference(vlm, batch)
        mine = objects[first_sample:first_sample + len(batch)]
        first_sample += len(batch)
        for m, h in causal.horizons(vlm, batch, horizon_methods, KEEP, seeds=SEEDS, ref=ref).items():
            horizon[m]["effect"] += h.effect.tolist()
            horizon[m]["random"] += h.random.mean(1).tolist()
        bar.update(len(horizon_methods))
        edges = {e: e for e in KNOCKOUT_EDGES}
        if OBJECT_EDGE in knock:
            edges[OBJECT_EDGE] = causal.Edge([o if o is not None else torch.zeros(0, dtype=torch.long) for o in mine],
                                             "question")
        per_start = []
        for s in starts:
            per_start.append({name: causal.knockout(vlm, batch, e, range(s, s + k), ref=ref).kl.tolist()
                              for name, e in edges.items()})
            bar.update()
        for name in edges:
            knock[name] += [None if name == OBJECT_EDGE and mine[b] is None else
                            [per_start[j][name][b] for j in range(len(starts))] for b in range(len(batch))]
    for m, h in horizon.items():
        effect, rand = torch.tensor(h["effect"]), torch.tensor(h["random"])
        advantage = rand.mean(0) - effect.mean(0)
        h["advantage"] = advantage.tolist()
        h["horizon"] = first_no_better(advantage, rand.mean(0), MARGIN)
    agreement = {m: {key: [] for key in ("effect", "random", "oracle", "share", "recall", "spearman", "deletion",
                                         "insertion")} for m in agreement_methods}
    excluded = {}
    for batch in _batches(ctx, ORACLE_SAMPLES):
        ref = causal.reference(vlm, batch)
        scores = causal.importance(vlm, batch, ref=ref)
        budget = tuple(keep_count(KEEP, lay.n_image_tokens) for lay in batch.layouts)
        found = oracle_for_counts(vlm, batch, budget, ref, step=ORACLE_STEP)
        scored = []
        for m in agreement_methods:
            counts = tuple(len(c) for c in method_columns(vlm, batch, m, KEEP))
            if counts != budget:  # a multi-stage method's first stage keeps more: another objective
                excluded[m] = f"keeps {counts[0]} tokens at its first stage, not {budget[0]}"
            else:
                scored.append(m)
        for m, a in causal.agreements(vlm, batch, scored, KEEP, seeds=SEEDS, ref=ref, oracle_sets=found,
                                      importance_scores=scores).items():
            for key in agreement[m]:
                agreement[m][key] += getattr(a, key).tolist()
        bar.update(len(batch))
    bar.close()
    return {"keep": KEEP, "samples": len(ctx.samples[:SAMPLES]), "oracle_samples": len(ctx.samples[:ORACLE_SAMPLES]),
            "seeds": SEEDS, "oracle_step": ORACLE_STEP, "layers": list(range(depth)), "margin": MARGIN,
            "horizon": horizon, "knockout": {"window": k, "starts": starts, "effect": knock},
            "agreement": {m: a for m, a in agreement.items() if m not in excluded}, "excluded": excluded,
            "budgets": list(BUDGETS)}


def oracle_share(a: dict, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(share, low, high): the share of the oracle recovered over the samples as a ratio of means,
    (mean random - mean method) / (mean random - mean oracle), with a 95 % bootstrap interval over
    samples (a per-sample ratio explodes where the oracle is barely better than random)."""
    import numpy as np

    effect, rand, best = (np.asarray(a[k], dtype=float) for k in ("effect", "random", "oracle"))

    def share(idx):
        gap = rand[idx].mean() - best[idx].mean()
        return (rand[idx].mean() - effect[idx].mean()) / gap if gap > 0 else math.nan
    n = len(effect)
    rng = np.random.default_rng(seed)
    boot = np.array([share(rng.integers(0, n, n)) for _ in range(resamples)])
    boot = boot[np.isfinite(boot)]
    low, high = (np.percentile(boot, [2.5, 97.5]) if boot.size else (math.nan, math.nan))
    return float(share(np.arange(n))), float(low), float(high)


def _bar(ctx: Context, total: int, desc: str):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=not ctx.progress)


def finite(values) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]
