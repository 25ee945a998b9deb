"""Offline evaluation: exact-match accuracy overall and per question type, with any pruning method.

`evaluate` answers every sample through `prune.run` (method "none" = the unpruned model on the
same path), so accuracy, the prefill-FLOPs ratio and the timings are measured like for like.
"""
from __future__ import annotations

import string
from collections import defaultdict

from .data.dataset import Sample
from .models.images import load_image


def normalise(text: str) -> str:
    """Lower case, first word, punctuation stripped: 'Red.' -> 'red'."""
    words = text.lower().translate(str.maketrans("", "", string.punctuation)).split()
    return words[0] if words else ""


def score(predictions: list[str], samples: list[Sample]) -> dict:
    """Exact match of `normalise(prediction)` and `normalise(answer)`.

    Returns {"accuracy": float, "per_type": {type: float}, "counts": {type: n}}; samples without an
    answer are an error (nothing to score against).
    """
    if len(predictions) != len(samples):
        raise ValueError(f"{len(predictions)} predictions for {len(samples)} samples.")
    hits = defaultdict(list)
    for pred, s in zip(predictions, samples):
        if s.answer is None:
            raise ValueError(f"sample '{s.id}' has no answer to score against.")
        hits[s.type or "all"].append(normalise(pred) == normalise(s.answer))
    total = [h for v in hits.values() for h in v]
    return {"accuracy": sum(total) / len(total) if total else 0.0,
            "per_type": {t: sum(v) / len(v) for t, v in sorted(hits.items())},
            "counts": {t: len(v) for t, v in sorted(hits.items())}}


def evaluate(vlm, samples: list[Sample], *, method: str = "none", keep: float | int = 1.0, batch_size: int = 16,
             max_new_tokens: int = 3, progress: bool = True, seed: int = 0, **knobs) -> dict:
    """Answer `samples` with `method` pruning at `keep`; accuracy, per-type accuracy, FLOPs ratio, times.

    Methods that draw at random (a `seed` knob: random, random-3x3) give sample i its own draw,
    seed seed * len(samples) + i, the same at any batch size; runs with different `seed`s never
    share a draw.

    Returns the `score` dict plus "method", "keep", "samples", "flops_ratio" (summed pruned over
    unpruned prefill FLOPs), "prefill_s" and "decode_s" (summed wall times), and "predictions".
    """
    from tqdm.auto import tqdm

    from . import prune

    seeded = "seed" in prune.get(method).knobs
    predictions, flops, full, prefill, decode = [], 0, 0, 0.0, 0.0
    for i in tqdm(range(0, len(samples), batch_size), desc=f"eval {method} keep {keep:g}", disable=not progress):
        chunk = samples[i:i + batch_size]
        batch = vlm.prepare([load_image(s.image) for s in chunk], [s.question for s in chunk])
        if seeded:
            knobs["seed"] = seed * len(samples) + i  # the run gives sample b of this chunk seed + b
        res = prune.run(vlm, batch, method, keep, max_new_tokens=max_new_tokens, **knobs)
        predictions += res.answers
        flops, full = flops + sum(res.flops), full + sum(res.flops_unpruned)
        prefill, decode = prefill + res.prefill_s, decode + res.decode_s
    return {**score(predictions, samples), "method": method, "keep": keep, "samples": len(samples),
            "flops_ratio": flops / full if full else 1.0, "prefill_s": prefill, "decode_s": decode,
            "predictions": predictions}
