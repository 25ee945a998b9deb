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
    run = {"method": method, "keep": keep, "seed": seed, "knobs": knobs}
    return evaluate_many(vlm, samples, [run], batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress,
                         records=None if records is None else [records], processes=processes)[0]


def evaluate_many(vlm, samples: list[Sample], runs: list[dict], *, batch_size: int = 16, max_new_tokens: int = 3,
                  progress: bool = True, records: list[str | Path] | None = None,
                  processes: Processes = ONE) -> list[dict]:
    """`evaluate` for several runs in one pass over the samples: each batch's images are loaded and
    prepared once for all runs, and its vision tower runs once for all the runs of methods that
    read nothing inside it (`tower_reuse.shareable`; [CLS]-attention methods run their own). Each
    result equals `evaluate`'s for its run alone (tested), and its time fields still time only the
    language model.

    runs: one dict per run: "method", and optionally "keep" (1.0), "seed" (0), "knobs" ({}).
    records: None, or one folder per run (see `evaluate`); an interrupted call resumes every run
        after its own last written batch.
    Returns one `evaluate` result per run, in order.
    """
    from .. import prune

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise VTAError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    runs = [_checked_run(r) for r in runs]
    if not runs:
        return []
    for r in runs:
        prune.get(r["method"])  # an unknown method fails here, before any record is written
    if records is not None and len(records) != len(runs):
        raise VTAError(f"{len(records)} records folders for {len(runs)} runs: give one folder per run.")
    if processes.world > 1 and records is None:
        raise VTAError("evaluating with several processes needs a records folder (`vtanalysis eval --out DIR`): "
                       "each process writes its answers there and the main process merges them.")
    start, stop = processes.span(len(samples))
    settings = [{"model": vlm.name, "method": r["method"], "keep": r["keep"], "seed": r["seed"],
                 "knobs": dict(r["knobs"]), "batch_size": batch_size, "max_new_tokens": max_new_tokens,
                 "samples": len(samples), "part": [processes.rank, processes.world]} for r in runs]
    part = f"part-{processes.rank}-of-{processes.world}.jsonl"
    answers = [_Answers(None if records is None else Path(records[j]) / part, settings[j], samples, start)
               for j in range(len(runs))]
    _answer(vlm, samples, start, stop, runs, answers, batch_size, max_new_tokens, progress and processes.main)
    results = []
    for j, r in enumerate(runs):
        rows = answers[j].rows
        if processes.world > 1:
            processes.wait()
            rows = [row for rank in range(processes.world) for row in
                    _read_records(Path(records[j]) / f"part-{rank}-of-{processes.world}.jsonl",
                                  {**settings[j], "part": [rank, processes.world]}, samples)[1]]
            processes.wait()
        if len(rows) != len(samples):
            raise VTAError(f"{len(rows)} answers for {len(samples)} samples under {records[j]}: a part is "
                           "unfinished; run again with the same settings and number of processes.")
        flops, full = sum(row["flops"] for row in rows), sum(row["flops_unpruned"] for row in rows)
        predictions = [row["prediction"] for row in rows]
        results.append({**score(predictions, samples), "method": r["method"], "keep": r["keep"],
                        "samples": len(samples), "flops_ratio": flops / full if full else 1.0,
                        "prefill_s": sum(row["prefill_s"] for row in rows),
                        "decode_s": sum(row["decode_s"] for row in rows), "predictions": predictions})
    return results


def _checked_run(run: dict) -> dict:
    unknown = set(run) - {"method", "keep", "seed", "knobs"}
    if "method" not in run or unknown:
        raise VTAError(f"a run is a dict with 'method' and optionally 'keep', 'seed' and 'knobs', got {run!r}.")
    return {"keep": 1.0, "seed": 0, "knobs": {}, **run}


class _Answers:
    """One run's answered rows of samples[start:stop], and the records file they are appended to
    (None: kept in memory only). Rows already in the file are read back: the run resumes after them."""

    def __init__(self, path: Path | None, settings: dict, samples: list[Sample], start: int):
        self.path, self.rows = path, []
        if path is None:
            return
        size, self.rows = _read_records(path, settings, samples) if path.is_file() else (0, [])
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:
            f.truncate(size)  # an unfinished last line is dropped
            if size == 0:
                f.write(json.dumps({"settings": settings}, default=str) + "\n")

    def add(self, new: list[dict]) -> None:
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write("".join(json.dumps(r) + "\n" for r in new))
                f.flush()
                os.fsync(f.fileno())
        self.rows += new


def _answer(vlm, samples, start, stop, runs, answers: list[_Answers], batch_size, max_new_tokens, progress: bool):
    """Answer samples[start:stop] for every run, batch by batch, after the rows each run already has."""
    from tqdm.auto import tqdm

    from .. import prune
    from ..models.tower_reuse import sharing

    specs = [prune.get(r["method"]) for r in runs]
    desc = f"eval {runs[0]['method']} keep {runs[0]['keep']:g}" if len(runs) == 1 else f"eval {len(runs)} runs"
    bar = tqdm(total=(stop - start) * len(runs), initial=sum(len(a.rows) for a in answers), desc=desc,
               unit="answer" if len(runs) > 1 else "sample", disable=not progress)
    with sharing(vlm):  # a batch's runs reuse its vision tower's output where they may (`prune.run`)
        for i in range(start, stop, batch_size):
            due = [j for j, a in enumerate(answers) if start + len(a.rows) == i]  # resumed runs skip their batches
            if not due:
                continue
            chunk = samples[i:min(i + batch_size, stop)]
            images, questions = [load_image(s.image) for s in chunk], [s.question for s in chunk]
            batch = vlm.prepare(images, questions)
            for j in due:
                res, full = _run(vlm, batch, images, questions, runs[j], specs[j], i, len(samples), max_new_tokens)
                answers[j].add([{"index": i + b, "id": s.id, "prediction": res.answers[b], "flops": res.flops[b],
                                 "flops_unpruned": full[b], "prefill_s": res.prefill_s / len(chunk),
                                 "decode_s": res.decode_s / len(chunk)} for b, s in enumerate(chunk)])
                bar.update(len(chunk))
    bar.close()


def _run(vlm, batch, images, questions, run: dict, spec, first: int, n_samples: int, max_new_tokens: int):
    """(RunResult, unpruned prefill FLOPs per sample) of one run on one batch, starting at sample `first`."""
    from .. import prune
    from ..prune.flops import unpruned_prefill_flops

    knobs = dict(run["knobs"])
    if "seed" in spec.knobs:
        knobs["seed"] = run["seed"] * n_samples + first  # the run gives sample b of this chunk seed + b
    if spec.where == "image":  # downsample: a smaller image, the unpruned model
        res = prune.run(vlm, vlm.prepare(prune.downsampled(vlm, images, run["keep"]), questions), "none",
                        max_new_tokens=max_new_tokens)
        return res, unpruned_prefill_flops(vlm, batch)  # of the full-size images
    res = prune.run(vlm, batch, run["method"], run["keep"], max_new_tokens=max_new_tokens, **knobs)
    return res, res.flops_unpruned


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
