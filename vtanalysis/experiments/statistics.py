"""The statistics behind the figures, each computed once per run and cached in `out/cache/`
(`context.cached`); under several processes each computes its part (`STATISTICS` in `make`)."""
from __future__ import annotations

import json

import numpy as np
import torch

from .._core.processes import shard
from ..errors import VTAError
from ..prune.vision import vision_refusal
from .context import ABLATIONS, KEEPS, METHODS, SEEDS, Context, cached, params_key, write_json


def task_maps(ctx: Context) -> dict:
    from ..analysis import positional_bias as pb

    return pb.task_maps(ctx.vlm, ctx.data, ctx.cache / "positional_bias", ctx.types or None, limit=ctx.per_type,
                        batch_size=ctx.batch_size, progress=ctx.progress, processes=ctx.processes, plot=False)


def off_diagonal_mean(sim: torch.Tensor) -> float:
    k = sim.shape[0]
    return float((sim.sum() - sim.diagonal().sum()) / max(1, k * k - k)) if k > 1 else 1.0


def inflection_result(ctx: Context) -> dict:
    """Shift curves of the collection over the samples, their inflection layers and, per keep in
    KEEPS, the AdaptInfer schedule they imply (or why there is none); computed once per run and
    cached like the scores (the inflection figure and the findings both read it)."""
    return cached(ctx.cache, "inflection", {**ctx.key, **ctx.control_key}, lambda: compute_inflection(ctx),
                  ctx.processes)


def compute_inflection(ctx: Context) -> dict:
    from ..analysis import inflection as inf
    from ..collect.dataset import collect_sharded
    from ..prune.budget import keep_count

    folder = ctx.cache / "collection_all"
    collect_sharded(ctx.vlm, ctx.data, folder, ctx.processes, batch_size=ctx.batch_size, limit=ctx.n,
                    progress=ctx.progress, plot=False)  # the inflection figure draws what the means show
    curves = inf.shift_curves(folder)
    found = [{**c.__dict__, "in_control": False} for c in inf.inflection_layers(curves)]
    control = None
    if ctx.control is not None:
        # the same collection on the control: a change point within one layer of one of its own (the
        # merge distance of `inflection_layers`) is marked as the control's, not the model's
        # one folder per control: a collection refuses another model's checkpoint
        where = ctx.cache / f"collection_control-{params_key(ctx.control_key)}"
        collect_sharded(ctx.control, ctx.data, where, ctx.processes, batch_size=ctx.batch_size, limit=ctx.n,
                        progress=ctx.progress, plot=False)
        control_curves = inf.shift_curves(where)
        control_found = inf.inflection_layers(control_curves)
        for c in found:
            c["in_control"] = any(abs(c["layer"] - k.layer) <= 1 for k in control_found)
        control = {"name": ctx.control.name, "curves": {k: np.asarray(v).tolist() for k, v in control_curves.items()},
                   "inflections": [k.__dict__ for k in control_found]}
    learned = [int(c["layer"]) for c in found if not c["in_control"]]  # the schedules follow only these
    n_image = ctx.vlm.prepare([ctx.samples[0].image], [ctx.samples[0].question]).layouts[0].n_image_tokens
    schedules = {}
    for keep in KEEPS:
        try:
            schedules[str(keep)] = inf.schedule_from_inflections(learned, ctx.vlm.num_layers, n_image, keep)
        except VTAError as err:
            schedules[str(keep)] = {"error": str(err)}
    return {"curves": {k: np.asarray(v).tolist() for k, v in curves.items()},
            "inflections": found, "control": control, "n_image_tokens": n_image, "samples": len(ctx.samples),
            "budgets": {str(k): keep_count(k, n_image) for k in KEEPS}, "schedules": schedules}


def scores(ctx: Context) -> dict:
    """Token scores against the object masks over the samples (`score_against_masks`). With several
    processes each scores its contiguous part into cache/scores-KEY-part-R-of-N.json (kept when
    another process fails, so a relaunch redoes only the missing parts), and the parts' rows,
    concatenated in rank order, give the one-process means (`score_summary`)."""
    from ..analysis.saliency import RULES, score_against_masks, score_summary

    procs = ctx.processes

    def score(samples):
        samples, masks = ctx.with_masks(samples)
        rules = RULES if ctx.vlm.adapter.has_cls else tuple(r for r in RULES if r != "cls")
        return score_against_masks(ctx.vlm, samples, masks, rules=rules, batch_size=ctx.batch_size,
                                   keep_scores=True, progress=ctx.progress)

    def compute():
        if procs.world == 1:
            return score(ctx.samples)
        part = lambda rank: ctx.cache / f"scores-{params_key(ctx.key)}-part-{rank}-of-{procs.world}.json"  # noqa: E731
        if not part(procs.rank).is_file():
            write_json(part(procs.rank), score(shard(ctx.samples, procs.rank, procs.world)))
        procs.wait()
        missing = [str(part(r)) for r in range(procs.world) if not part(r).is_file()]
        if missing:
            raise VTAError(f"{', '.join(missing)} missing: a process failed before scoring its part; launch "
                           f"again with {procs.world} processes (the parts written are kept).")
        parts = [json.loads(part(r).read_text()) for r in range(procs.world)]
        return score_summary([row for p in parts for row in p["rows"]], [i for p in parts for i in p["skipped"]],
                             parts[0]["layer"])
    return cached(ctx.cache, "scores", ctx.key, compute, procs)


def scored_rows(ctx: Context) -> list[dict]:
    """The scored samples, or an error saying why none could be scored."""
    result = scores(ctx)
    if not result["rows"]:
        raise VTAError(f"none of the {len(result['skipped'])} samples has an image token more than 50 % inside its "
                       f"object on {ctx.vlm.name}'s grid (its tokens are too coarse for these objects), so the "
                       "saliency figures have nothing to score; use larger images or objects, or skip "
                       "saliency_auc, t2i_similarity and coverage (--only).")
    return result["rows"]


def accuracy_rows(ctx: Context, methods=METHODS + ABLATIONS, keeps=KEEPS) -> list[dict]:
    """One row per (method, keep), plus the unpruned row: accuracy with its 95 % Wilson interval,
    the measured FLOPs and prefill-time ratios and the per-type accuracies. A method that draws at
    random is run with each of SEEDS: the row has the mean, the interval of the pooled answers
    and the min-max over seeds."""
    from ..prune.registry import get

    methods = [m for m in methods if vision_refusal(ctx.vlm, get(m).needs) is None]
    wanted = [("none", 1.0, 0)] + [(m, k, seed) for m in methods for k in keeps
                                   for seed in (SEEDS if "seed" in get(m).knobs else (0,))]
    # every run answered in one pass over the samples (each batch prepared once)
    found = dict(zip(wanted, ctx.evaluations([{"method": m, "keep": k, "seed": seed} for m, k, seed in wanted])))
    base = found[("none", 1.0, 0)]
    rows = [{"method": "none", "keep": 1.0, **accuracy_row(base, base)}]
    for m in methods:
        for k in keeps:
            if "seed" not in get(m).knobs:
                rows.append({"method": m, "keep": k, **accuracy_row(found[(m, k, 0)], base)})
                continue
            runs = [found[(m, k, seed)] for seed in SEEDS]
            accs = [r["accuracy"] for r in runs]
            pooled = {**runs[0], "accuracy": float(np.mean(accs)), "hits": [h for r in runs for h in r["hits"]]}
            rows.append({"method": m, "keep": k, **accuracy_row(pooled, base), "seeds": len(SEEDS),
                         "accuracy_min": min(accs), "accuracy_max": max(accs)})
    return rows


def accuracy_row(r: dict, base: dict) -> dict:
    from ..analysis.stats import wilson

    low, high = wilson(sum(r["hits"]), len(r["hits"]))  # a seeded method: its seeds' answers pooled
    return {"accuracy": r["accuracy"], "acc_low": low, "acc_high": high, "n": r["samples"],
            "flops_ratio": r["flops_ratio"], "prefill_s": r["prefill_s"],
            "time_ratio": r["prefill_s"] / base["prefill_s"] if base["prefill_s"] else float("nan"),
            **{f"acc/{t}": v for t, v in r["per_type"].items()}, "hits": r["hits"]}


def findings_rows(ctx: Context) -> list[dict]:
    from . import findings as fd

    scored = scores(ctx) if ctx.vlm.adapter.has_cls else {"rows": []}
    from .causal import causal_result

    return fd.findings(ctx, scored, inflection_result(ctx), causal_result(ctx))
