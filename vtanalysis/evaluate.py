"""Offline evaluation: exact-match accuracy overall and per question type, with any pruning method.

`evaluate` answers every sample through `prune.run` (method "none" = the unpruned model on the
same path), so accuracy, the prefill-FLOPs ratio and the timings are measured like for like.
"""
from __future__ import annotations

import re
from collections import defaultdict

from .data.dataset import Sample
from .errors import VTAError
from .models.images import load_image


# The standard VQA answer normalisation (VQA v2 evaluation: processPunctuation, processDigitArticle)
_PUNCT = set(";/[]\"{}()=+\\_-><@`,?!*#%^&$:~|")
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {"dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "arent": "aren't", "cant": "can't",
                 "wont": "won't", "didnt": "didn't", "wasnt": "wasn't", "werent": "weren't", "im": "i'm",
                 "ive": "i've", "thats": "that's", "whats": "what's", "youre": "you're", "theyre": "they're"}


def normalise(text: str) -> str:
    """The VQA answer normalisation: lower case; periods dropped except inside numbers ('1.5');
    other punctuation removed where it touches a space or the ends, else replaced by a space
    ('black-and-white' -> 'black and white'); number words to digits ('two' -> '2'); articles
    (a, an, the) dropped; common contractions restored. 'The Red.' -> 'red', 'Two apples' -> '2 apples'.
    Answers are then compared whole."""
    text = text.lower().replace("\n", " ").replace("\t", " ").strip()
    text = re.sub(r"(?<!\d)\.(?!\d)", "", text)  # a period that is not a decimal point
    out = []
    for i, ch in enumerate(text):
        if ch in _PUNCT:
            touches = i == 0 or i == len(text) - 1 or text[i - 1] == " " or text[i + 1] == " "
            out.append("" if touches else " ")
        else:
            out.append(ch)
    words = []
    for word in "".join(out).split():
        word = _NUMBERS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def score(predictions: list[str], samples: list[Sample]) -> dict:
    """Exact match of the whole `normalise(prediction)` and `normalise(answer)` ('red square' is not
    'red circle').

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
    from .prune.flops import unpruned_prefill_flops

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise VTAError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    seeded = "seed" in prune.get(method).knobs
    on_image = prune.get(method).where == "image"  # downsample: a smaller image, the unpruned model
    predictions, flops, full, prefill, decode = [], 0, 0, 0.0, 0.0
    for i in tqdm(range(0, len(samples), batch_size), desc=f"eval {method} keep {keep:g}", disable=not progress):
        chunk = samples[i:i + batch_size]
        images, questions = [load_image(s.image) for s in chunk], [s.question for s in chunk]
        batch = vlm.prepare(images, questions)
        if seeded:
            knobs["seed"] = seed * len(samples) + i  # the run gives sample b of this chunk seed + b
        if on_image:
            full += sum(unpruned_prefill_flops(vlm, batch))  # of the full-size images
            res = prune.run(vlm, vlm.prepare(prune.downsampled(vlm, images, keep), questions), "none",
                            max_new_tokens=max_new_tokens)
            flops += sum(res.flops)
        else:
            res = prune.run(vlm, batch, method, keep, max_new_tokens=max_new_tokens, **knobs)
            flops, full = flops + sum(res.flops), full + sum(res.flops_unpruned)
        predictions += res.answers
        prefill, decode = prefill + res.prefill_s, decode + res.decode_s
    return {**score(predictions, samples), "method": method, "keep": keep, "samples": len(samples),
            "flops_ratio": flops / full if full else 1.0, "prefill_s": prefill, "decode_s": decode,
            "predictions": predictions}
