"""`oracle`: the kept set of a given size found by search on the causal effect itself.

Greedy forward selection (the kept set grows from empty): each round scores every image token t
by the effect of keeping only kept ∪ {t} (the rest ablated from `layer` on) and adds the `step`
tokens whose addition leaves the smallest effect, until `keep` tokens are kept. No proxy can beat
it by much on its own objective; it is the reference `agreement` and `horizon` measure methods
against. Each round is one batch of n replayed copies, chunked to a memory budget; for "drop" and
"mask" (the same ablation) each copy holds only its kept image tokens (`replay_kept`), so a round
costs what n short sequences cost. `step` defaults to ceil(keep / 16), so at most 16 rounds.
"""
from __future__ import annotations

import math

import torch

from ..errors import VTAError
from ..prune.budget import keep_count
from .ablation import Reference, explained
from .importance import default_chunk, image_mean
from .replay import Recorded, each_sample, kept_positions, record, replay, replay_kept

SEARCH_HOWS = ("drop", "mask", "zero", "mean")


def effects(vlm, rec: Recorded, ablated: torch.Tensor, how: str, ref: Reference, b: int, *, start: int,
            measure: str = "kl", chunk: int | None = None, memory_mb: float = 1024, mean=None) -> torch.Tensor:
    """[C] the effect of ablating each row of `ablated` ([C, n] bool) for sample b, replayed from `start`."""
    return _chunked(vlm, rec, ablated, ref, b, measure, chunk or default_chunk(vlm, rec.inputs[0].shape[1], memory_mb),
                    lambda rows, log_probs: replay(vlm, rec, rows, how, log_probs, ref.ids[b], ref.mask[b], mean,
                                                   start=start))


def _chunked(vlm, rec: Recorded, rows: torch.Tensor, ref: Reference, b: int, measure: str, size: int, run):
    """`run(rows[chunk], ref log-probs)` -> (kl, log p) over chunks of `size` rows, as the effect `measure`."""
    out = []
    for first in range(0, rows.shape[0], size):
        kl, logprob = run(rows[first:first + size], ref.log_probs[b].to(vlm.device))
        out.append(kl if measure == "kl" else ref.logprob[b].to(logprob.device) - logprob)
    return torch.cat(out).float()


def effects_kept(vlm, rec: Recorded, kept: torch.Tensor, ref: Reference, b: int, *, start: int,
                 measure: str = "kl", chunk: int | None = None, memory_mb: float = 1024) -> torch.Tensor:
    """[C] the effect of keeping only the image columns `kept[c]` ([C, k], on the model's device) and
    dropping the rest from `start` on (`replay_kept`: shortened sequences, so small sets are cheap)."""
    positions = kept_positions(rec, kept)
    return _chunked(vlm, rec, positions, ref, b, measure, chunk or default_chunk(vlm, positions.shape[1], memory_mb),
                    lambda rows, log_probs: replay_kept(vlm, rec, rows, log_probs, ref.ids[b], ref.mask[b], start=start))


def effects_of_sets(vlm, rec: Recorded, sets: list[torch.Tensor], ref: Reference, b: int, *, start: int,
                    measure: str = "kl", chunk: int | None = None, memory_mb: float = 1024) -> torch.Tensor:
    """[len(sets)] on the CPU: `effects_kept` of each kept set (1-D column tensors of any sizes), one
    replay per distinct size, so callers comparing many selections pay per size, not per set."""
    out = torch.zeros(len(sets))
    for size in sorted({len(s) for s in sets}):
        rows = [j for j, s in enumerate(sets) if len(s) == size]
        kept = torch.stack([sets[j] for j in rows]).to(vlm.device)
        out[rows] = effects_kept(vlm, rec, kept, ref, b, start=start, measure=measure, chunk=chunk,
                                 memory_mb=memory_mb).cpu()  # ok-host: once per set size
    return out


def search(vlm, rec: Recorded, lay, k: int, how: str, ref: Reference, b: int, *, start: int, step: int | None = None,
           measure: str = "kl", chunk: int | None = None, memory_mb: float = 1024) -> torch.Tensor:
    """[k] LongTensor (on the model's device, ascending): sample b's oracle kept columns at `start`."""
    n = lay.n_image_tokens
    step = step or max(1, math.ceil(k / 16))
    mean = image_mean(rec, lay) if how == "mean" else None
    kept = torch.zeros(n, dtype=torch.bool, device=vlm.device)
    eye = torch.eye(n, dtype=torch.bool, device=vlm.device)
    count = 0  # host count: each round adds a known number, no read-back
    every = torch.arange(n, device=vlm.device)[:, None]
    while count < k:
        if how in ("drop", "mask"):  # the same ablation (tests), computed on the kept tokens alone
            chosen = kept.float().topk(count).indices.expand(n, count)  # count is known: no read-back
            effect = effects_kept(vlm, rec, torch.cat([chosen, every], 1), ref, b, start=start, measure=measure,
                                  chunk=chunk, memory_mb=memory_mb)  # row t: t already kept repeats it (unused)
        else:
            trial = kept[None, :] | eye  # row t: the kept set with t added
            effect = effects(vlm, rec, ~trial, how, ref, b, start=start, measure=measure, chunk=chunk,
                             memory_mb=memory_mb, mean=mean)
        effect = effect.masked_fill(kept, float("inf"))
        add = min(step, k - count)
        kept[torch.topk(effect, add, largest=False).indices] = True
        count += add
    return kept.float().topk(k).indices.sort().values  # k is known: no data-dependent size


def oracle(vlm, batch, keep: float | int, layer: int = 0, how: str = "drop", measure: str = "kl", *,
           step: int | None = None, target: list[str] | None = None, ref: Reference | None = None,
           chunk: int | None = None, memory_mb: float = 1024, max_new_tokens: int = 8,
           progress: bool = False) -> list[torch.Tensor]:
    """The kept set of `keep` image tokens that leaves the smallest effect, by greedy forward selection.

    Args:
        vlm, batch: a `VLM` and its `VLMInputs`.
        keep: tokens to keep per sample: a fraction in (0, 1] of each sample's image tokens or a count.
        layer, how, measure: the ablation of the tokens not kept and the effect minimised (as `importance`).
        step: tokens added per round (default ceil(k / 16)); 1 is the exact greedy search.
        target, ref, chunk, memory_mb, max_new_tokens: as in `importance`.
    Returns:
        per sample, LongTensor [k] of kept image-token columns (ascending), on the CPU.
    """
    if how not in SEARCH_HOWS:
        raise VTAError(f"how={how!r}; use one of {', '.join(map(repr, SEARCH_HOWS))}.")
    if how in ("zero", "mean") and layer != 0:
        raise VTAError(f"how={how!r} replaces input embeddings, before every layer: use layer=0.")
    if len(batch) == 0:
        raise VTAError("the batch is empty: prepare at least one sample.")
    layer = vlm.check_layer(layer, "ablation layer")
    counts = [keep_count(keep, lay.n_image_tokens) for lay in batch.layouts]
    ref = explained(vlm, batch, ref, target, max_new_tokens)
    out = []
    with torch.inference_mode():
        recorded = record(vlm, batch, ref, layer)
        for b in each_sample(batch, progress, f"oracle (keep {keep}, layer {layer})"):
            kept = search(vlm, recorded[b], batch.layouts[b], counts[b], how, ref, b, start=layer, step=step,
                          measure=measure, chunk=chunk, memory_mb=memory_mb)
            out.append(kept.cpu())  # ok-host: the result, once per sample
    return out


def oracle_for_counts(vlm, batch, counts: tuple[int, ...], ref: Reference, *, layer: int = 0, measure: str = "kl",
                      step: int | None = None) -> list[torch.Tensor]:
    """Per sample, the oracle set of that sample's own count (one `oracle` search per distinct count in
    the batch): what `agreement(..., oracle_sets=)` takes for a method keeping `counts`."""
    found = {n: oracle(vlm, batch, n, layer, measure=measure, ref=ref, step=step) for n in sorted(set(counts))}
    return [found[n][b] for b, n in enumerate(counts)]
