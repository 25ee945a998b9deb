"""What every figure and statistic shares: the `Context` (model, samples, output folder, cache
keys, processes), the default methods and budgets, and atomic writers with a parameter-keyed cache."""
from __future__ import annotations

import copy
import csv
import hashlib
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from .._core.files import atomic_write, code_fingerprint, data_fingerprint, model_fingerprint
from .._core.processes import ONE, Processes
from ..data.dataset import Sample, read_samples
from ..errors import VTAError

METHODS = ("fastv", "adaptprune", "adafv", "fastervlm", "adaptinfer", "divprune", "dart", "random", "uniform", "pool")

ABLATIONS = ("adaptprune-correction", "adaptprune-distance")  # AdaptPrune Table 4: one cue at a time

KEEPS = (0.5, 0.25, 0.1)

SEEDS = (0, 1, 2)  # methods that draw at random are evaluated with each

BASELINES = ("random", "uniform", "pool")  # drawn distinctly: the rows a method must beat


# -- plumbing ----------------------------------------------------------------------------------------
def save(fig, out: Path, name: str) -> list[Path]:
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def write_json(path: Path, obj) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1, default=float)))


def write_csv(path: Path, rows: list[dict]) -> Path:
    keys = list(dict.fromkeys(k for r in rows for k in r))

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    return atomic_write(path, write)


def params_key(params: dict) -> str:
    return hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:10]


def cache_path(cache: Path, name: str, params: dict) -> Path:
    """Where `cached` keeps the result of (name, params)."""
    return cache / f"{name}-{params_key(params)}.json"


def cached(cache: Path, name: str, params: dict, compute, processes: Processes = ONE):
    """compute() once per (name, params); the JSON result is kept in cache/ and reused on reruns.

    With several processes every one calls this with the same arguments and computes (compute may
    wait for the others); the main process writes the file, and all return after it is written, so
    that they agree on what is cached the next time."""
    path = cache_path(cache, name, params)
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    if processes.main:
        write_json(path, result)
    processes.wait()
    return result


class Context:
    """What every figure needs: the model, the samples, where to write, the knobs, and the processes
    sharing the statistics (`make_figures`)."""

    def __init__(self, vlm, data: Path, out: Path, samples: int, batch_size: int, progress: bool,
                 processes: Processes = ONE, control=None):
        self.vlm, self.data, self.out, self.n, self.batch_size = vlm, data, out, samples, batch_size
        # a model the layer-wise statistics are compared with (e.g. `vlm` before its training): what
        # both show comes from how the model was made, not from what it learned
        self.control = control
        self.processes, self.progress = processes, progress and processes.main
        self.cache = out / "cache"
        self.cache.mkdir(parents=True, exist_ok=True)
        self.samples: list[Sample] = read_samples(data)[:samples]
        self.types = sorted({s.type for s in self.samples if s.type})
        self.per_type = max(1, samples // max(1, len(self.types)))  # positional bias: samples per task
        # a cached result is reused only for the same weights, data files, sample count and code
        self.key = {"model": vlm.name, "weights": model_fingerprint(vlm.model), "data": data_fingerprint(data),
                    "samples": samples, "code": code_fingerprint()}
        self.control_key = {} if control is None else {
            "control": control.name, "control_weights": model_fingerprint(control.model)}

    def alone(self) -> "Context":
        """This context for the main process on its own (after the shared statistics are cached):
        the same samples and cache keys, with no weights hashed or samples read again."""
        if self.processes.world == 1:
            return self
        single = copy.copy(self)
        single.processes = ONE
        return single

    def evaluation(self, method: str, keep: float, seed: int = 0, **knobs) -> dict:
        """`evaluate` on the samples, once per (method, keep, seed, knobs): the cached result has
        per-sample `hits` (1 = exact match, in sample order) instead of the predictions, so that two
        runs can be compared pair-wise."""
        return self.evaluations([{"method": method, "keep": keep, "seed": seed, "knobs": knobs}])[0]

    def evaluations(self, runs: list[dict]) -> list[dict]:
        """`evaluation` of several runs ({"method", "keep", optional "seed" and "knobs"}): those not
        cached yet are answered together (`evaluate_many`: one pass over the samples, each batch
        prepared once), then each is cached as `cached` caches a result (one barrier for all of them:
        a per-run `cached` would let a faster main process write a file another process then finds,
        and skip a barrier the main one waits at)."""
        from .evaluate import evaluate_many, normalise  # evaluate imports torch and the engine: only when asked

        runs = [{"seed": 0, "knobs": {}, **r} for r in runs]
        # the name tells knobs apart; the params key the weights, data, samples and code
        names = [f"eval-{r['method']}-{r['keep']}-seed{r['seed']}" + ("-knobs" if r["knobs"] else "") for r in runs]
        params = [{**self.key, "knobs": r["knobs"]} for r in runs]
        todo = [j for j in range(len(runs)) if not cache_path(self.cache, names[j], params[j]).is_file()]
        done = {}
        if todo:  # the answers go to records/ per batch: an interrupted evaluation resumes
            found = evaluate_many(self.vlm, self.samples, [runs[j] for j in todo], batch_size=self.batch_size,
                                  progress=self.progress, processes=self.processes,
                                  records=[self.cache / "records" / f"{names[j]}-{params_key(params[j])}" for j in todo])
            for j, r in zip(todo, found):
                r["hits"] = [int(normalise(p) == normalise(s.answer)) for p, s in zip(r.pop("predictions"), self.samples)]
                done[j] = r
                if self.processes.main:
                    write_json(cache_path(self.cache, names[j], params[j]), r)
            # every process saw the same files missing; none reads on before all are written
            self.processes.wait()
        return [done[j] if j in done else json.loads(cache_path(self.cache, names[j], params[j]).read_text())
                for j in range(len(runs))]

    def with_masks(self, samples: list[Sample]) -> tuple[list[Sample], list[np.ndarray]]:
        """Those of `samples` with an object mask, and the masks: ground truth where the data has it
        (`extra.objects` + `targets`, as `data.shapes` writes), else SAM-2 masks grounded to the
        question by open_clip."""
        from ..data.shapes import target_mask

        if any(s.extra.get("objects") for s in self.samples):
            pairs = [(s, target_mask(s)) for s in samples if s.extra.get("targets") and s.extra.get("objects")]
            return [p[0] for p in pairs], [p[1] for p in pairs]
        from ..analysis.grounding import Grounder
        from ..models.images import load_image

        try:
            grounder = Grounder.from_pretrained()
        except VTAError:
            raise
        except Exception as err:  # no network or no cached weights
            raise VTAError(f"'{self.data}' has no object masks and SAM-2 / open_clip weights could not be loaded "
                           f"({type(err).__name__}: {err}); the saliency figures need one or the other.") from err
        return samples, [grounder.mask(load_image(s.image), s.question) for s in samples]
