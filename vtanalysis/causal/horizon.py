"""`horizon`: from which layer on is a method's selection no better than random? (arXiv 2512.07580)

For every decoder layer l, the effect of keeping only the method's selection from layer l on (the
other image tokens dropped there), beside random selections of the same size (several seeds) and,
optionally, the causal oracle's (`oracle`, searched at layer l). 2512.07580 finds an "information
horizon": past some layer, attention-based selections are no better than random ones, because
the image's information has already moved into the text tokens.

The method selects at layer l when it prunes inside the LLM and has a `layer` knob (FastV: its
scores from layer l-1; at l = 0, where nothing precedes, its layer-1 selection), else it keeps its
own selection at every l (pre-LLM methods).

    advantage[l] = mean over samples of (mean over seeds of random[b, s, l]) - method[b, l]
    horizon      = the first layer from which advantage <= margin x (mean random effect) at every
                   later layer (None when the method stays better than random to the last layer)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import VTAError
from .ablation import Reference, explained
from .oracle import effects_of_sets, search
from .replay import each_sample, record
from .selections import method_columns, random_columns, takes_layer

MARGIN = 0.05  # the share of the random effect within which a method counts as no better than random


@dataclass
class HorizonResult:
    """Effects per layer of keeping only a selection from that layer on.

    Attributes:
        method, keep: what was measured.
        layers: [0, 1, ..., L-1].
        effect: [B, L] the method's selection.
        random: [B, seeds, L] random selections of the same size.
        oracle: [B, L] the oracle's (searched at each layer), or None.
        kept: per sample, the method's kept count.
        advantage: [L] mean over samples of random (seed mean) minus the method's effect.
        horizon: the first layer from which the method is no better than random (see the module), or None.
        measure: "kl" or "logprob_drop".
    """
    method: str
    keep: float | int
    layers: list[int]
    effect: torch.Tensor
    random: torch.Tensor
    oracle: torch.Tensor | None
    kept: list[int]
    advantage: torch.Tensor
    horizon: int | None
    measure: str


def first_no_better(advantage: torch.Tensor, random_mean: torch.Tensor, margin: float) -> int | None:
    """The first layer l with advantage[l'] <= margin x random_mean[l'] for every l' >= l, or None."""
    at_most = (advantage <= margin * random_mean).tolist()  # ok-host: L values, once, after the runs
    if not at_most[-1]:
        return None
    l = len(at_most) - 1
    while l > 0 and at_most[l - 1]:
        l -= 1
    return l


def horizon(vlm, batch, method: str, keep: float | int, *, seeds: int = 5, with_oracle: bool = False,
            measure: str = "kl", margin: float = MARGIN, target: list[str] | None = None, ref: Reference | None = None,
            chunk: int | None = None, memory_mb: float = 1024, max_new_tokens: int = 8, progress: bool = False,
            **knobs) -> HorizonResult:
    """For every layer l, the effect of keeping only `method`'s selection (and random ones) from l on.

    Args:
        vlm, batch: a `VLM` and its `VLMInputs`.
        method, keep, **knobs: a registered method and its budget, as in `prune.run`.
        seeds: random selections per sample and layer (seeds 0 .. seeds-1 per sample).
        with_oracle: also search the oracle set at every layer (`oracle`; one search per layer).
        measure: "kl" or "logprob_drop".
        margin: the share of the random effect within which the method counts as no better.
        target, ref, chunk, memory_mb, max_new_tokens: as in `importance`.
    Returns:
        `HorizonResult` (tensors on the CPU).
    """
    return horizons(vlm, batch, [method], keep, seeds=seeds, with_oracle=with_oracle, measure=measure, margin=margin,
                    target=target, ref=ref, chunk=chunk, memory_mb=memory_mb, max_new_tokens=max_new_tokens,
                    progress=progress, **knobs)[method]


def horizons(vlm, batch, methods: list[str], keep: float | int, *, seeds: int = 5, with_oracle: bool = False,
             measure: str = "kl", margin: float = MARGIN, target: list[str] | None = None,
             ref: Reference | None = None, chunk: int | None = None, memory_mb: float = 1024, max_new_tokens: int = 8,
             progress: bool = False, **knobs) -> dict[str, HorizonResult]:
    """`horizon` of several methods at once: {method: HorizonResult}, each equal to its `horizon`.

    The random selections (and oracle sets) depend only on the sample, the layer and the kept count,
    so methods keeping the same count share them: per sample and layer, every set of one size is
    replayed together, once. `knobs` go to every method."""
    if len(batch) == 0:
        raise VTAError("the batch is empty: prepare at least one sample.")
    if seeds < 1:
        raise VTAError(f"seeds={seeds}: give at least one random selection to compare with.")
    if not methods:
        return {}
    ref = explained(vlm, batch, ref, target, max_new_tokens)
    depth = vlm.num_layers
    moving = {m: takes_layer(m) for m in methods}
    chosen = {}  # per method, per layer it selects at, per sample: its kept columns
    for m in methods:
        chosen[m] = {l: method_columns(vlm, batch, m, keep, l if moving[m] else None, **knobs)
                     for l in (range(1, depth) if moving[m] and depth > 1 else [0])}
        chosen[m].setdefault(0, chosen[m].get(1))  # layer 0: the earliest selection an in-LLM method can make (layer 1's)
    effect = {m: torch.zeros(len(batch), depth) for m in methods}
    rand = {m: torch.zeros(len(batch), seeds, depth) for m in methods}
    best = {m: torch.zeros(len(batch), depth) for m in methods} if with_oracle else None
    desc = f"horizon ({', '.join(methods)}, keep {keep})"
    with torch.inference_mode():
        recorded = record(vlm, batch, ref, 0)
        for b in each_sample(batch, progress, desc):
            lay, rec = batch.layouts[b], recorded[b]
            n = lay.n_image_tokens
            for l in range(depth):
                mine = {m: chosen[m][l if moving[m] else 0][b] for m in methods}
                sizes = sorted({len(c) for c in mine.values()})
                sets = [mine[m] for m in methods]
                at = {}  # where each size's random sets (then its oracle set) start in `sets`
                for k in sizes:
                    at[k] = len(sets)
                    sets += [random_columns(n, k, seed=1000 * b + s) for s in range(seeds)]
                    if with_oracle:
                        sets.append(search(vlm, rec, lay, k, "drop", ref, b, start=l, measure=measure, chunk=chunk,
                                           memory_mb=memory_mb).cpu())  # ok-host: once per layer and size
                out = effects_of_sets(vlm, rec, sets, ref, b, start=l, measure=measure, chunk=chunk,
                                      memory_mb=memory_mb)
                for j, m in enumerate(methods):
                    k = len(mine[m])
                    effect[m][b, l], rand[m][b, :, l] = out[j], out[at[k]:at[k] + seeds]
                    if with_oracle:
                        best[m][b, l] = out[at[k] + seeds]
    results = {}
    for m in methods:
        random_mean = rand[m].mean(1).mean(0)
        advantage = random_mean - effect[m].mean(0)
        results[m] = HorizonResult(m, keep, list(range(depth)), effect[m], rand[m], best[m] if with_oracle else None,
                                   [len(c) for c in chosen[m][0]], advantage,
                                   first_no_better(advantage, random_mean, margin), measure)
    return results
