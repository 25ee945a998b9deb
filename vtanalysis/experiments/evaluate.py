"""Offline evaluation: exact-match accuracy overall and per question type, with any pruning method.

`evaluate` answers every sample through `prune.run` (method "none" = the unpruned model on the
same path), so accuracy, the prefill-FLOPs ratio and the timings are measured like for like.
"""
from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path

from ..data.dataset import Sample
from ..errors import VTAError
from ..models.images import load_image
from .._core.processes import ONE, Processes, span


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
             max_new_tokens: int = 3, progress: bool = True, seed: int = 0, records: str | Path | None = None,
             processes: Processes = ONE, **knobs) -> dict:
    """Answer `samples` with `method` pruning at `keep`; accuracy, per-type accuracy, FLOPs ratio, times.

    Methods that draw at random (a `seed` knob: random, random-3x3) give sample i its own draw,
    seed seed * len(samples) + i, the same at any batch size and number of processes; runs with
    different `seed`s never share a draw.

    records: a folder for one JSON line per answered sample (index, id, prediction, flops,
        flops_unpruned, prefill_s and decode_s: its share of its batch's), written after every
        batch; a run interrupted and started again with the same folder and settings goes on after
        the last written batch. Needed with several processes.
    processes: with several (`accelerate launch`), each answers its contiguous part of the samples
        into records/part-R-of-N.jsonl and every process returns the result over all samples (the
        parts concatenated in order: the same predictions as one process).

    Returns the `score` dict plus "method", "keep", "samples", "flops_ratio" (summed pruned over
    unpruned prefill FLOPs), "prefill_s" and "decode_s" (summed wall times), and "predictions".
    """
    from .. import prune

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise VTAError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    prune.get(method)  # an unknown method fails here, before any record is written
    if processes.world > 1 and records is None:
        raise VTAError("evaluating with several processes needs a records folder (`vtanalysis eval --out DIR`): "
                       "each process writes its answers there and the main process merges them.")
    start, stop = processes.span(len(samples))
    settings = {"model": vlm.name, "method": method, "keep": keep, "seed": seed, "knobs": dict(knobs),
                "batch_size": batch_size, "max_new_tokens": max_new_tokens, "samples": len(samples),
                "part": [processes.rank, processes.world]}
    path = None if records is None else Path(records) / f"part-{processes.rank}-of-{processes.world}.jsonl"
    rows = _answer(vlm, samples, start, stop, method, keep, batch_size, max_new_tokens, seed, knobs, settings, path,
                   progress and processes.main)
    if processes.world > 1:
        processes.wait()
        rows = [r for rank in range(processes.world) for r in
                _read_records(Path(records) / f"part-{rank}-of-{processes.world}.jsonl",
                              {**settings, "part": [rank, processes.world]}, samples)[1]]
        processes.wait()
    if len(rows) != len(samples):
        raise VTAError(f"{len(rows)} answers for {len(samples)} samples under {records}: a part is unfinished; "
                       "run again with the same settings and number of processes.")
    flops, full = sum(r["flops"] for r in rows), sum(r["flops_unpruned"] for r in rows)
    predictions = [r["prediction"] for r in rows]
    return {**score(predictions, samples), "method": method, "keep": keep, "samples": len(samples),
            "flops_ratio": flops / full if full else 1.0, "prefill_s": sum(r["prefill_s"] for r in rows),
            "decode_s": sum(r["decode_s"] for r in rows), "predictions": predictions}


def _answer(vlm, samples, start, stop, method, keep, batch_size, max_new_tokens, seed, knobs, settings,
            path: Path | None, progress: bool) -> list[dict]:
    """Rows of samples[start:stop], answered batch by batch after those already in `path`."""
    from tqdm.auto import tqdm

    from .. import prune
    from ..prune.flops import unpruned_prefill_flops

    seeded = "seed" in prune.get(method).knobs
    on_image = prune.get(method).where == "image"  # downsample: a smaller image, the unpruned model
    rows, size, knobs = [], 0, dict(knobs)
    if path is not None:
        size, rows = _read_records(path, settings, samples) if path.is_file() else (0, [])
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:
            f.truncate(size)  # an unfinished last line is dropped
            if size == 0:
                f.write(json.dumps({"settings": settings}, default=str) + "\n")
    bar = tqdm(total=stop - start, initial=len(rows), desc=f"eval {method} keep {keep:g}", unit="sample",
               disable=not progress)
    for i in range(start + len(rows), stop, batch_size):
        chunk = samples[i:min(i + batch_size, stop)]
        images, questions = [load_image(s.image) for s in chunk], [s.question for s in chunk]
        batch = vlm.prepare(images, questions)
        if seeded:
            knobs["seed"] = seed * len(samples) + i  # the run gives sample b of this chunk seed + b
        if on_image:
            full = unpruned_prefill_flops(vlm, batch)  # of the full-size images
            res = prune.run(vlm, vlm.prepare(prune.downsampled(vlm, images, keep), questions), "none",
                            max_new_tokens=max_new_tokens)
        else:
            res = prune.run(vlm, batch, method, keep, max_new_tokens=max_new_tokens, **knobs)
            full = res.flops_unpruned
        new = [{"index": i + b, "id": s.id, "prediction": res.answers[b], "flops": res.flops[b],
                "flops_unpruned": full[b], "prefill_s": res.prefill_s / len(chunk),
                "decode_s": res.decode_s / len(chunk)} for b, s in enumerate(chunk)]
        if path is not None:
            with open(path, "a") as f:
                f.write("".join(json.dumps(r) + "\n" for r in new))
                f.flush()
                os.fsync(f.fileno())
        rows += new
        bar.update(len(chunk))
    bar.close()
    return rows


def _read_records(path: Path, settings: dict, samples: list[Sample]) -> tuple[int, list[dict]]:
    """(bytes of complete lines, rows) of a records file written with `settings`."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise VTAError(f"{path} is missing: its process did not run; run again with the same settings and number "
                       "of processes.") from None
    size = data.rfind(b"\n") + 1  # what follows the last newline is an interrupted write
    try:
        complete = data[:size].decode().splitlines()
        head = json.loads(complete[0])["settings"] if complete else None
        rows = [json.loads(line) for line in complete[1:]]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise VTAError(f"{path} is corrupt ({err}); delete it and run again (the other parts are kept).") from None
    if head is not None and head != json.loads(json.dumps(settings, default=str)):
        raise VTAError(f"{path} holds answers of another run ({head}); pass a new records folder (--out) or the "
                       "settings it was written with.")
    first = settings["part"][0]
    start = span(len(samples), first, settings["part"][1])[0]
    for k, r in enumerate(rows):
        if r.get("index") != start + k or r.get("id") != samples[start + k].id:
            raise VTAError(f"{path} line {k + 2} is sample {r.get('id')!r}, expected {samples[start + k].id!r}: the "
                           "records belong to other data; pass a new records folder.")
    return size, rows
