"""The findings table (`findings.md`, written by `vtanalysis figures`): each claim of the three papers
that a model with object masks can test, the measured numbers with 95 % intervals, and a verdict.

A comparison "A beats B" is measured on the same samples, so its interval is the paired one
(`analysis.stats.paired`); the verdict follows `analysis.stats.verdict` (A > B: the interval of
A - B above 0; A >= B: no deficit beyond 0.02 inside it; an interval below 0 refutes). A claim
the model refutes is reported as refuted. Claims:

    AdaptPrune Tab. 1   adaptprune > fastv at keep 0.1 (90 % of image tokens pruned)
    AdaptPrune Tab. 4   adaptprune >= each ablation the registry has, at keep 0.1
    AdaFV Tab. 8        adafv (adaptive mixture) >= adafv-fixed, >= adafv-t2i, >= fastervlm ([CLS] only)
    AdaFV Fig. 2-4      on questions about the small object: text-guided (adafv-t2i) >= [CLS] (fastervlm)
                        at keep 0.1, and the T2I AUC >= the [CLS] AUC on those questions
    AdaFV Fig. 2        [CLS] saliency AUC against the object masks > 0.5
    AdaptInfer          inflection layers exist; the schedule placed at them > the same number of
                        stages placed evenly over the depth, at the same average image-token budget.
                        With a control model (`make_figures(control=)`, e.g. the grown demo before its
                        fine-tuning) a change point within one layer of one of the control's is how the
                        model was made, not a finding: it is reported apart and not counted, and the
                        claim is inconclusive when only such change points are found
    baselines           adaptprune and adafv > the random, spatially uniform and pooled baselines at keep 0.1
                        (2025 studies found such baselines competitive; issue 22)
    causal (issue 39)   each method's selection leaves a smaller effect (KL of the next-token distribution)
                        than random selections of its size (2502.11501's demand, on the causal effect);
                        the image reaches the last token through the question before it does directly
                        (2411.18620: knocking out image -> question matters at earlier layers than image ->
                        last; effect-weighted mean window start, paired over samples); there is an
                        information horizon (2512.07580: from some layer on FastV's selection is within
                        the stated margin of random's effect, after being better than random before it)
"""
from __future__ import annotations

import math

import numpy as np

from ..analysis.stats import mean_interval, paired, verdict

KEEP = 0.1
NOT_TESTABLE = "not testable"  # the model cannot show the phenomenon at all (e.g. too few layers)
MIN_SEGMENT = 2  # `analysis.inflection.inflection_layers`' min_size: the fewest layers between change points
QUESTION_ROUTE = 0.05  # image -> question must reach this share of image -> last's largest effect to be a route
SCHEDULE_KEEP = 0.25  # an AdaptInfer budget every depth can meet (0.1 is below some first-stage floors)


def _fmt(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"


def compare(claim: str, source: str, a: dict, b: dict, *, at_least: bool, only=None, samples=None) -> dict:
    """A claim row from two evaluations on the same samples (optionally restricted by `only(sample)`)."""
    pick = [i for i, s in enumerate(samples) if only is None or only(s)]
    ha, hb = np.asarray(a["hits"])[pick], np.asarray(b["hits"])[pick]
    d, low, high, n = paired(ha, hb)
    measured = (f"{a['method']} {ha.mean():.3f} vs {b['method']} {hb.mean():.3f}; difference {d:+.3f} "
                f"[{_fmt(low)}, {_fmt(high)}] (FLOPs {a['flops_ratio']:.2f} vs {b['flops_ratio']:.2f})")
    return {"claim": claim, "source": source, "n": n, "measured": measured,
            "verdict": verdict(low, high, at_least=at_least)}


def _saliency_rows(scores: dict) -> list[dict]:
    rows = scores["rows"]
    out = []
    cls = [r.get("cls/auc", math.nan) for r in rows]
    m, low, high, n = mean_interval(cls)
    out.append({"claim": "[CLS] saliency ranks the queried object's tokens above the rest (mean AUC > 0.5)",
                "source": "AdaFV Fig. 2", "n": n, "measured": f"mean AUC {_fmt(m)} [{_fmt(low)}, {_fmt(high)}]",
                "verdict": verdict(low - 0.5, high - 0.5) if n else "inconclusive"})
    small = [r for r in rows if r["type"] == "small"]
    if small and "cls/auc" in small[0]:
        d, low, high, n = paired([r["t2i-cosine/auc"] for r in small], [r["cls/auc"] for r in small])
        out.append({"claim": "on the small, non-salient object, T2I similarity finds its tokens at least as "
                             "well as [CLS] saliency (AUC)", "source": "AdaFV Fig. 2-4", "n": n,
                    "measured": f"AUC difference T2I - [CLS] {d:+.3f} [{_fmt(low)}, {_fmt(high)}]",
                    "verdict": verdict(low, high, at_least=True)})
    return out


def _schedule_rows(ctx, result: dict) -> list[dict]:
    from ..analysis.inflection import schedule_from_inflections
    from ..errors import VTAError

    every = result["inflections"]
    found = [c for c in every if not c.get("in_control")]  # those the control (`Context.control`) lacks
    made = [c for c in every if c.get("in_control")]
    layers = ", ".join(f"{c['layer']:.0f} ({c['confidence']:.2f})" for c in found) or "none"
    claim = "the cross-modal attention shift has inflection layers"
    points = ctx.vlm.num_layers - 1  # the layer-to-layer curves (JS, top-k overlap) have a point per pair
    if not found and points < 2 * MIN_SEGMENT:
        return [{"claim": claim, "source": "AdaptInfer", "n": result["samples"],
                 "measured": f"{ctx.vlm.num_layers} decoder layers: the layer-to-layer curves have {points} points, "
                             f"fewer than the {2 * MIN_SEGMENT} that two segments of at least {MIN_SEGMENT} layers "
                             "need, so no change point can be found", "verdict": NOT_TESTABLE}]
    measured = f"inflection layers (confidence): {layers}"
    if result.get("control"):
        shared = ", ".join(f"{c['layer']:.0f}" for c in made) or "none"
        own = ", ".join(f"{c['layer']:.0f}" for c in result["control"]["inflections"]) or "none"
        measured += (f"; the control {result['control']['name']} has change points at {own}, so layers within one "
                     f"of them are how the model was made, not what it learned: {shared}")
    rows = [{"claim": claim, "source": "AdaptInfer", "n": result["samples"], "measured": measured,
             # only change points the control shares: the model shows none of its own, which tests nothing
             "verdict": "reproduced" if found else "inconclusive" if made else "refuted"}]
    if not found:
        return rows
    n_layers, n_image = ctx.vlm.num_layers, result["n_image_tokens"]
    at = [int(c["layer"]) for c in found]
    # the control: as many stages, evenly over the depth (a new stage starts after each of these layers)
    even = [round((i + 1) * n_layers / (len(at) + 1)) - 1 for i in range(len(at))]
    claim = (f"an AdaptInfer schedule placed at the inflection layers beats one with as many stages evenly "
             f"over the depth, at the same average budget (keep {SCHEDULE_KEEP})")
    if sorted(even) == sorted(at):
        return rows + [{"claim": claim, "source": "AdaptInfer", "n": 0, "verdict": "inconclusive",
                        "measured": f"the inflection layers {at} are the evenly spaced ones: no control"}]
    schedules = []
    for layers_, which in ((at, "at the inflection layers"), (even, "of the evenly spaced control")):
        try:
            schedules.append(schedule_from_inflections(layers_, n_layers, n_image, SCHEDULE_KEEP))
        except VTAError as err:  # say whose schedule failed: the control's failing is no fault of the model's
            return rows + [{"claim": claim, "source": "AdaptInfer", "n": 0, "verdict": "inconclusive",
                            "measured": f"no schedule {which} (after layers {layers_}): {err}"}]
    runs = [{"method": "adaptinfer", "keep": SCHEDULE_KEEP, "knobs": knobs} for knobs in schedules]
    row = compare(claim, "AdaptInfer", *ctx.evaluations(runs), at_least=False, samples=ctx.samples)
    row["measured"] = f"after layers {at} vs {even}: " + row["measured"].replace("adaptinfer", "schedule")
    return rows + [row]


def findings(ctx, scores: dict, inflection: dict, causal: dict | None = None) -> list[dict]:
    """Every claim row: {"claim", "source", "n", "measured", "verdict"}."""
    from ..prune.registry import get

    ev, samples = ctx.evaluation, ctx.samples
    rows = [compare("AdaptPrune beats FastV at 90 % pruning", "AdaptPrune Tab. 1", ev("adaptprune", KEEP),
                    ev("fastv", KEEP), at_least=False, samples=samples)]
    for ablation in ("adaptprune-correction", "adaptprune-distance"):
        rows.append(compare(f"full AdaptPrune >= its ablation {ablation} ({get(ablation).summary.split(': ')[-1]})",
                            "AdaptPrune Tab. 4", ev("adaptprune", KEEP), ev(ablation, KEEP), at_least=True,
                            samples=samples))
    if ctx.vlm.adapter.has_cls:
        for other, what in (("adafv-fixed", "the fixed half-half mixture"), ("adafv-t2i", "T2I similarity alone"),
                            ("fastervlm", "[CLS] saliency alone")):
            rows.append(compare(f"AdaFV's adaptive mixture >= {what} ({other})", "AdaFV Tab. 8",
                                ev("adafv", KEEP), ev(other, KEEP), at_least=True, samples=samples))
        rows.append(compare("on questions about the small object, text-guided selection (adafv-t2i) >= text-agnostic "
                            "[CLS] selection (fastervlm)", "AdaFV Fig. 2-4", ev("adafv-t2i", KEEP),
                            ev("fastervlm", KEEP), at_least=True, only=lambda s: s.type == "small", samples=samples))
        rows += _saliency_rows(scores)
    rows += _schedule_rows(ctx, inflection)
    for method in ("adaptprune", "adafv") if ctx.vlm.adapter.has_cls else ("adaptprune",):
        for baseline in ("random", "uniform", "pool"):
            other = _seed_mean(ctx, baseline) if "seed" in get(baseline).knobs else ev(baseline, KEEP)
            rows.append(compare(f"{method} beats the {baseline} baseline at keep {KEEP}", "baselines (issue 22)",
                                ev(method, KEEP), other, at_least=False, samples=samples))
    return rows + (causal_rows(causal) if causal is not None else [])


def causal_rows(result: dict) -> list[dict]:
    """The causal claims (see the module docstring) from `experiments.causal.causal_result`."""
    from .causal import oracle_share

    keep, rows = result["keep"], []
    for method, a in result["agreement"].items():
        d, low, high, n = paired(a["random"], a["effect"])
        share = oracle_share(a)
        recall = mean_interval(a["recall"])
        rows.append({"claim": f"{method}'s selection keeps more of what the answer depends on than random "
                              f"selections of its size (smaller KL at keep {keep})",
                     "source": "2502.11501; causal (issue 39)", "n": n,
                     "measured": f"KL {np.mean(a['effect']):.3f} vs random {np.mean(a['random']):.3f}; random - "
                                 f"{method} {d:+.3f} [{_fmt(low)}, {_fmt(high)}]; share of the oracle recovered "
                                 f"{_fmt(share[0])} [{_fmt(share[1])}, {_fmt(share[2])}], recall of its tokens {_fmt(recall[0])}",
                     "verdict": verdict(low, high)})
    knock = result["knockout"]
    starts = np.asarray(knock["starts"], dtype=float)

    def centroid(effects):  # effect-weighted mean window start per sample (NaN where nothing changes)
        e = np.clip(np.asarray(effects, dtype=float), 0, None)
        total = e.sum(1)
        return np.where(total > 1e-3, (e * starts).sum(1) / np.where(total > 1e-3, total, 1), np.nan)
    via_question = np.mean(knock["effect"]["image->question"], axis=0)  # mean effect per window
    direct = np.mean(knock["effect"]["image->last"], axis=0)
    claim = ("the image reaches the last token through the question tokens before it does directly (knocking out "
             "image -> question matters at earlier layers than image -> last, by effect-weighted window start; "
             f"windows of {knock['window']} layers; refuted when image -> question never reaches "
             f"{QUESTION_ROUTE:.0%} of image -> last's largest effect)")
    if via_question.max() < QUESTION_ROUTE * direct.max():
        rows.append({"claim": claim, "source": "2411.18620", "n": len(knock["effect"]["image->last"]),
                     "measured": f"largest mean KL: image -> question {via_question.max():.3f}, image -> last "
                                 f"{direct.max():.3f}: the question tokens carry no image information the answer uses",
                     "verdict": "refuted"})
    else:
        question, last = centroid(knock["effect"]["image->question"]), centroid(knock["effect"]["image->last"])
        both = np.isfinite(question) & np.isfinite(last)
        d, low, high, n = paired(last[both], question[both])
        rows.append({"claim": claim, "source": "2411.18620", "n": n,
                     "measured": f"effect-weighted window start: image -> question {np.nanmean(question):.2f}, "
                                 f"image -> last {np.nanmean(last):.2f}; difference {d:+.2f} [{_fmt(low)}, {_fmt(high)}]",
                     "verdict": verdict(low, high)})
    if "fastv" in result["horizon"]:
        h = result["horizon"]["fastv"]
        effect, rand = np.asarray(h["effect"]), np.asarray(h["random"])
        intervals = [paired(rand[:, l], effect[:, l]) for l in result["layers"]]
        better = [l for l, (_, lo, _, _) in enumerate(intervals) if lo > 0]
        at = h["horizon"]
        last_better = intervals[-1][1] > result["margin"] * rand[:, -1].mean()
        verdict_ = ("reproduced" if at is not None and any(l < at for l in better) else
                    "refuted" if last_better else "inconclusive")
        rows.append({"claim": f"there is an information horizon: from some layer on, FastV's selection (keep {keep}) "
                              f"is no better than random (within {result['margin']:.0%} of random's effect from that "
                              "layer to the last), after being better than random before it",
                     "source": "2512.07580", "n": len(effect),
                     "measured": "random - fastv per layer: " + ", ".join(f"{d:+.3f}" for d, *_ in intervals) +
                                 f"; horizon {'none' if at is None else 'layer ' + str(at)}; better than random "
                                 f"(interval above 0) at layers {better or 'none'}",
                     "verdict": verdict_})
    return rows


def _seed_mean(ctx, method: str) -> dict:
    """A seeded method's hits averaged over the figures' seeds (a per-sample share in [0, 1])."""
    from .context import SEEDS

    runs = [ctx.evaluation(method, KEEP, seed=seed) for seed in SEEDS]
    hits = np.mean([r["hits"] for r in runs], axis=0)
    return {**runs[0], "hits": hits.tolist(), "accuracy": float(hits.mean())}


def markdown(rows: list[dict], model: str, n: int) -> str:
    lines = [f"# Findings on {model}", "",
             f"n = {n} held-out samples (fewer where a claim is about one question type or needs a search); keep "
             f"{KEEP} unless stated; 95 % intervals in brackets, paired over the same samples for differences.", "",
             "Verdicts (`vtanalysis.experiments.findings`, `vtanalysis.analysis.stats.verdict`):", "",
             "- \"A beats B\" (A > B): **reproduced** when the whole interval of A - B is above 0, **refuted** when "
             "it is below 0, else **inconclusive**.",
             "- \"A at least as good as B\" (A >= B): **reproduced** when the interval excludes a deficit larger "
             "than 0.02 (its lower end above -0.02), **refuted** when the whole interval is below 0, else "
             "**inconclusive**.",
             "- **not testable**: the model cannot show the phenomenon at all (the row says why).",
             "- Rows with another rule state it in the claim (the causal rows: issue 39).", "",
             "| claim | source | n | measured | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {r['claim']} | {r['source']} | {r['n']} | {r['measured']} | **{r['verdict']}** |" for r in rows]
    return "\n".join(lines) + "\n"
