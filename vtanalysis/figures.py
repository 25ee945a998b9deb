"""`vtanalysis figures`: every figure of the three papers from one model and one dataset.

Each figure writes NAME.png, NAME.pdf and the numbers behind it (NAME.json or NAME.csv) into
`out/`. Expensive intermediate results live in `out/cache/` (attention collections resume;
scored and evaluated results are reused when their parameters match), so a rerun is fast and
`--only NAME` redoes one figure. Under `accelerate launch` every process computes its part of
the statistics (`STATISTICS`) and the main process draws (`make_figures(processes=)`).

    positional_bias   mean last-token image attention per task and layer (AdaptPrune Fig. 2, 8, 9)
    inflection        attention-shift curves and their change points (AdaptInfer)
    saliency_auc      AUC of each token score against the queried object (AdaFV Fig. 2, 8)
    t2i_similarity    distribution of normalised cosine vs normalised inner product (AdaFV Fig. 3)
    coverage          tokens kept until the first / every relevant token is in (AdaFV Fig. 4)
    overlays          kept tokens per method and keep ratio (AdaptPrune Fig. 1, 6, 7; AdaFV Fig. 7)
    accuracy_vs_keep  accuracy (95 % Wilson intervals) against the measured FLOPs ratio and against
                      keep, per method, with the AdaptPrune Table 4 ablations dotted and the random,
                      uniform and pool baselines dashed (AdaptPrune Fig. 5; AdaFV Tab. 3-5)
    findings          findings.md: each testable claim of the papers, measured, with a verdict
                      (`vtanalysis.findings`)
"""
from __future__ import annotations

import copy
import csv
import hashlib
import json
from pathlib import Path

import matplotlib

import matplotlib.pyplot as plt
import numpy as np
import torch

from .data.dataset import Sample, read_samples
from .errors import VTAError
from .files import atomic_write, code_fingerprint, data_fingerprint, model_fingerprint, output_folder
from .processes import ONE, Processes, shard
from .prune.vision import vision_refusal

FIGURES = ("positional_bias", "inflection", "saliency_auc", "t2i_similarity", "coverage", "overlays",
           "accuracy_vs_keep", "findings")
METHODS = ("fastv", "adaptprune", "adafv", "fastervlm", "adaptinfer", "divprune", "dart", "random", "uniform", "pool")
ABLATIONS = ("adaptprune-correction", "adaptprune-distance")  # AdaptPrune Table 4: one cue at a time
KEEPS = (0.5, 0.25, 0.1)
SEEDS = (0, 1, 2)  # methods that draw at random are evaluated with each


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


def cached(cache: Path, name: str, params: dict, compute, processes: Processes = ONE):
    """compute() once per (name, params); the JSON result is kept in cache/ and reused on reruns.

    With several processes every one calls this with the same arguments and computes (compute may
    wait for the others); the main process writes the file, and all return after it is written, so
    that they agree on what is cached the next time."""
    path = cache / f"{name}-{params_key(params)}.json"
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
                 processes: Processes = ONE):
        self.vlm, self.data, self.out, self.n, self.batch_size = vlm, data, out, samples, batch_size
        self.processes, self.progress = processes, progress and processes.main
        self.cache = out / "cache"
        self.cache.mkdir(parents=True, exist_ok=True)
        self.samples: list[Sample] = read_samples(data)[:samples]
        self.types = sorted({s.type for s in self.samples if s.type})
        self.per_type = max(1, samples // max(1, len(self.types)))  # positional bias: samples per task
        # a cached result is reused only for the same weights, data files, sample count and code
        self.key = {"model": vlm.name, "weights": model_fingerprint(vlm.model), "data": data_fingerprint(data),
                    "samples": samples, "code": code_fingerprint()}

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
        from .evaluate import evaluate, normalise

        name = f"eval-{method}-{keep}-seed{seed}" + ("-knobs" if knobs else "")  # the key tells knobs apart
        params = {**self.key, "knobs": knobs}

        def compute():  # the answers go to records/ per batch: an interrupted evaluation resumes
            r = evaluate(self.vlm, self.samples, method=method, keep=keep, batch_size=self.batch_size,
                         progress=self.progress, seed=seed, records=self.cache / "records" / f"{name}-{params_key(params)}",
                         processes=self.processes, **knobs)
            r["hits"] = [int(normalise(p) == normalise(s.answer)) for p, s in zip(r.pop("predictions"), self.samples)]
            return r
        return cached(self.cache, name, params, compute, self.processes)

    def with_masks(self, samples: list[Sample]) -> tuple[list[Sample], list[np.ndarray]]:
        """Those of `samples` with an object mask, and the masks: ground truth where the data has it
        (`extra.objects` + `targets`, as `data.shapes` writes), else SAM-2 masks grounded to the
        question by open_clip."""
        from .data.shapes import target_mask

        if any(s.extra.get("objects") for s in self.samples):
            pairs = [(s, target_mask(s)) for s in samples if s.extra.get("targets") and s.extra.get("objects")]
            return [p[0] for p in pairs], [p[1] for p in pairs]
        from .analysis.grounding import Grounder
        from .models.images import load_image

        try:
            grounder = Grounder.from_pretrained()
        except VTAError:
            raise
        except Exception as err:  # no network or no cached weights
            raise VTAError(f"'{self.data}' has no object masks and SAM-2 / open_clip weights could not be loaded "
                           f"({type(err).__name__}: {err}); the saliency figures need one or the other.") from err
        return samples, [grounder.mask(load_image(s.image), s.question) for s in samples]


# -- figures -----------------------------------------------------------------------------------------
def positional_bias(ctx: Context) -> list[Path]:
    from .analysis import positional_bias as pb
    from .viz.attention_maps import pick_layers

    per_type = ctx.per_type
    maps = _task_maps(ctx)
    names, sim = pb.similarity_matrix(maps)
    layers = list(range(ctx.vlm.num_layers))
    cols = pick_layers(layers, 6)
    fig, axes = plt.subplots(len(names), len(cols), figsize=(2.1 * len(cols) + 1.2, 2.1 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        for c, li in enumerate(cols):
            ax = axes[r, c]
            im = ax.imshow(maps[name][li].numpy(), cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"layer {layers[li]}", fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    fig.suptitle(f"{ctx.vlm.name}: mean last-token attention on the image grid, per task (rows, n = {per_type} "
                 f"samples each) and layer\n"
                 f"mean pairwise correlation across tasks r = {_off_diagonal_mean(sim):.2f}", fontsize=10)
    paths = save(fig, ctx.out, "positional_bias")
    fig, ax = plt.subplots(figsize=(1.0 * len(names) + 2.5, 0.9 * len(names) + 1.8))
    im = ax.imshow(sim.numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{float(sim[i, j]):.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="Pearson r, mean over layers")
    ax.set_title(f"Similarity of attention maps across tasks (n = {per_type} per task)", fontsize=10)
    paths += save(fig, ctx.out, "positional_bias_similarity")
    per_layer = {f"{a}|{b}": pb.map_correlation(maps[a], maps[b]).tolist() for i, a in enumerate(names) for b in names[:i]}
    paths.append(write_json(ctx.out / "positional_bias.json", {
        "tasks": names, "layers": layers, "samples_per_task": per_type, "similarity": sim.tolist(),
        "mean_cross_task_r": _off_diagonal_mean(sim), "per_layer_r": per_layer,
        "maps": {n: m.tolist() for n, m in maps.items()}}))
    return paths


def _task_maps(ctx: Context) -> dict:
    from .analysis import positional_bias as pb

    return pb.task_maps(ctx.vlm, ctx.data, ctx.cache / "positional_bias", ctx.types or None, limit=ctx.per_type,
                        batch_size=ctx.batch_size, progress=ctx.progress, processes=ctx.processes)


def _off_diagonal_mean(sim: torch.Tensor) -> float:
    k = sim.shape[0]
    return float((sim.sum() - sim.diagonal().sum()) / max(1, k * k - k)) if k > 1 else 1.0


def inflection_result(ctx: Context) -> dict:
    """Shift curves of the collection over the samples, their inflection layers and, per keep in
    KEEPS, the AdaptInfer schedule they imply (or why there is none); computed once per run and
    cached like the scores (the inflection figure and the findings both read it)."""
    return cached(ctx.cache, "inflection", ctx.key, lambda: _inflection_result(ctx), ctx.processes)


def _inflection_result(ctx: Context) -> dict:
    from .analysis import inflection as inf
    from .collect.dataset import collect_sharded
    from .prune.budget import keep_count

    folder = ctx.cache / "collection_all"
    collect_sharded(ctx.vlm, ctx.data, folder, ctx.processes, batch_size=ctx.batch_size, limit=ctx.n,
                    progress=ctx.progress)
    curves = inf.shift_curves(folder)
    found = inf.inflection_layers(curves)
    n_image = ctx.vlm.prepare([ctx.samples[0].image], [ctx.samples[0].question]).layouts[0].n_image_tokens
    schedules = {}
    for keep in KEEPS:
        try:
            schedules[str(keep)] = inf.schedule_from_inflections(found, ctx.vlm.num_layers, n_image, keep)
        except VTAError as err:
            schedules[str(keep)] = {"error": str(err)}
    return {"curves": {k: np.asarray(v).tolist() for k, v in curves.items()},
            "inflections": [c.__dict__ for c in found], "n_image_tokens": n_image, "samples": len(ctx.samples),
            "budgets": {str(k): keep_count(k, n_image) for k in KEEPS}, "schedules": schedules}


def inflection(ctx: Context) -> list[Path]:
    result = inflection_result(ctx)
    curves, found = result["curves"], result["inflections"]
    titles = {"image_mass": "image attention mass of the last token", "js": "JS divergence, layer l-1 -> l",
              "topk_overlap": "top-10% overlap, layer l-1 -> l"}
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6), gridspec_kw={"width_ratios": [1, 1, 1, 0.8]})
    for ax, (name, title) in zip(axes, titles.items()):
        ax.plot(curves["layers"], curves[name], "o-", ms=3)
        for c in found:
            ax.axvline(c["layer"], color="crimson", ls="--", lw=1)
            ax.text(c["layer"], ax.get_ylim()[1], f" {c['layer']} ({c['confidence']:.2f})", color="crimson",
                    fontsize=7, va="top")
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_title(title, fontsize=10)
    if found:
        lines = ["AdaptInfer schedules implied", "(prune after each inflection layer):", ""]
        for keep, sched in result["schedules"].items():
            lines.append(f"keep {keep} (budget {result['budgets'][keep]} of {result['n_image_tokens']}):")
            lines.append(f"  {sched['error'][:60]}..." if "error" in sched else
                         "  " + ", ".join(f"from layer {a}: {c}" for a, c in zip(sched["layers"], sched["counts"])))
    else:
        lines = ["no inflection layer detected:", "no AdaptInfer schedule follows", "(use a single-stage method)"]
    axes[3].axis("off")
    axes[3].text(0, 1, "\n".join(lines), va="top", fontsize=7.5, family="monospace", transform=axes[3].transAxes)
    marks = "dashed: inflection layers (confidence)" if found else "no inflection layer detected"
    fig.suptitle(f"{ctx.vlm.name}: cross-modal attention shift, mean over n = {result['samples']} samples; {marks}",
                 fontsize=10)
    paths = save(fig, ctx.out, "inflection")
    paths.append(write_json(ctx.out / "inflection.json", result))
    return paths


def _scores(ctx: Context) -> dict:
    """Token scores against the object masks over the samples (`score_against_masks`). With several
    processes each scores its contiguous part into cache/scores-KEY-part-R-of-N.json (kept when
    another process fails, so a relaunch redoes only the missing parts), and the parts' rows,
    concatenated in rank order, give the one-process means (`score_summary`)."""
    from .analysis.saliency import RULES, score_against_masks, score_summary

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


def _scored_rows(ctx: Context) -> list[dict]:
    """The scored samples, or an error saying why none could be scored."""
    result = _scores(ctx)
    if not result["rows"]:
        raise VTAError(f"none of the {len(result['skipped'])} samples has an image token more than 50 % inside its "
                       f"object on {ctx.vlm.name}'s grid (its tokens are too coarse for these objects), so the "
                       "saliency figures have nothing to score; use larger images or objects, or skip "
                       "saliency_auc, t2i_similarity and coverage (--only).")
    return result["rows"]


def saliency_auc(ctx: Context) -> list[Path]:
    rows = _scored_rows(ctx)
    rules = [k[:-len("/auc")] for k in rows[0] if k.endswith("/auc")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [1, 1.4]})
    data = [[r[f"{rule}/auc"] for r in rows] for rule in rules]
    axes[0].boxplot(data, showmeans=True)
    axes[0].set_xticks(range(1, len(rules) + 1), rules)
    axes[0].axhline(0.5, color="grey", ls=":", lw=1)
    axes[0].set_ylabel("ROC AUC vs the queried object's tokens")
    axes[0].set_title(f"AUC per sample (n={len(rows)}; 0.5 = chance)", fontsize=10)
    types = sorted({r["type"] for r in rows})
    width = 0.8 / len(rules)
    for i, rule in enumerate(rules):
        means = [np.nanmean([r[f"{rule}/auc"] for r in rows if r["type"] == t]) for t in types]
        axes[1].bar(np.arange(len(types)) + i * width, means, width, label=rule)
    axes[1].set_xticks(np.arange(len(types)) + 0.4 - width / 2, types)
    axes[1].axhline(0.5, color="grey", ls=":", lw=1)
    axes[1].set_ylabel("mean AUC")
    axes[1].set_title("Mean AUC per question type", fontsize=10)
    axes[1].legend(fontsize=8, ncol=2)
    fig.suptitle(f"{ctx.vlm.name}: token scores against ground-truth object masks (50% patch rule)", fontsize=10)
    paths = save(fig, ctx.out, "saliency_auc")
    flat = [{k: v for k, v in r.items() if k != "scores"} for r in rows]
    paths.append(write_csv(ctx.out / "saliency_auc.csv", flat))
    return paths


def t2i_similarity(ctx: Context) -> list[Path]:
    rows = _scored_rows(ctx)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    summary = {}
    for ax, rule, label in zip(axes, ("t2i-cosine", "t2i-inner"), ("normalised cosine", "normalised inner product")):
        values = np.concatenate([np.asarray(r["scores"][rule]) for r in rows])
        ax.hist(values, bins=60, color="steelblue")
        ax.set_yscale("log")
        ax.set_xlabel(f"{label}: max over text tokens of softmax over image tokens")
        ax.set_ylabel("image tokens (log)")
        ax.set_title(f"{label}: max {values.max():.3f}, 99th pct {np.percentile(values, 99):.4f}", fontsize=10)
        summary[rule] = {"max": float(values.max()), "p99": float(np.percentile(values, 99)),
                         "median": float(np.median(values)), "n_tokens": int(values.size)}
    fig.suptitle(f"{ctx.vlm.name}: text-to-image similarity of the LLM input embeddings (AdaFV Fig. 3)", fontsize=10)
    paths = save(fig, ctx.out, "t2i_similarity")
    paths.append(write_json(ctx.out / "t2i_similarity.json", summary))
    return paths


def coverage(ctx: Context) -> list[Path]:
    rows = _scored_rows(ctx)
    rules = [k[:-len("/auc")] for k in rows[0] if k.endswith("/auc")]
    n_image = max(r["n_image_tokens"] for r in rows)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    summary = {}
    for ax, stat, title in zip(axes, ("first_relevant", "tokens_to_cover"),
                               ("first relevant token included", "every relevant token included")):
        for rule in rules:
            v = np.sort([r[f"{rule}/{stat}"] for r in rows])
            ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=f"{rule} (median {np.median(v):.0f})")
            summary[f"{rule}/{stat}"] = {"median": float(np.median(v)), "mean": float(v.mean())}
        ax.set_xlabel(f"image tokens kept (of {n_image})")
        ax.set_ylabel("share of samples")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"{ctx.vlm.name}: tokens needed before the queried object is kept (AdaFV Fig. 4)", fontsize=10)
    paths = save(fig, ctx.out, "coverage")
    paths.append(write_json(ctx.out / "coverage.json", summary))
    return paths


def overlays(ctx: Context, methods=METHODS, keeps=KEEPS, n_images: int = 2) -> list[Path]:
    from .models.images import load_image
    from .prune.registry import get
    from .prune.run import select
    from .viz.overlay import draw_overlay

    methods = [m for m in methods if vision_refusal(ctx.vlm, get(m).needs) is None]
    shown = ctx.samples[:n_images]
    batch = ctx.vlm.prepare([load_image(s.image) for s in shown], [s.question for s in shown])
    kept = {(m, k): select(m, ctx.vlm, batch, k)[-1] for m in methods for k in keeps}
    paths = []
    for i, s in enumerate(shown):
        image, lay = load_image(s.image), batch.layouts[i]
        grid = next(g for g in lay.grids if g.image == 0)
        extent = ctx.vlm.adapter.grid_extent(ctx.vlm.processor, grid, image.size)
        fig, axes = plt.subplots(len(keeps), len(methods), figsize=(2.3 * len(methods), 2.5 * len(keeps)), squeeze=False)
        for c, m in enumerate(methods):
            for r, k in enumerate(keeps):
                draw_overlay(axes[r, c], image, grid, kept[(m, k)][i], extent,
                             title=f"{m}, keep {k:g}" if r == 0 else f"keep {k:g}")
        fig.suptitle(f"{ctx.vlm.name}: kept image tokens (bright, outlined) - \"{s.question}\"", fontsize=10)
        paths += save(fig, ctx.out, f"overlays_{i}")
    paths.append(write_json(ctx.out / "overlays.json", {
        "samples": [s.id for s in shown],
        "kept_columns": {f"{m}@{k}": [c.tolist() for c in cols] for (m, k), cols in kept.items()}}))
    return paths


BASELINES = ("random", "uniform", "pool")  # drawn distinctly: the rows a method must beat


def accuracy_rows(ctx: Context, methods=METHODS + ABLATIONS, keeps=KEEPS) -> list[dict]:
    """One row per (method, keep), plus the unpruned row: accuracy with its 95 % Wilson interval,
    the measured FLOPs and prefill-time ratios and the per-type accuracies. A method that draws at
    random is run with each of SEEDS: the row has the mean, the interval of the pooled answers
    and the min-max over seeds."""
    from .prune.registry import get

    base = ctx.evaluation("none", 1.0)
    rows = [{"method": "none", "keep": 1.0, **_row(base, base)}]
    for m in methods:
        if vision_refusal(ctx.vlm, get(m).needs) is not None:
            continue
        for k in keeps:
            if "seed" not in get(m).knobs:
                rows.append({"method": m, "keep": k, **_row(ctx.evaluation(m, k), base)})
                continue
            runs = [ctx.evaluation(m, k, seed=seed) for seed in SEEDS]
            accs = [r["accuracy"] for r in runs]
            pooled = {**runs[0], "accuracy": float(np.mean(accs)), "hits": [h for r in runs for h in r["hits"]]}
            rows.append({"method": m, "keep": k, **_row(pooled, base), "seeds": len(SEEDS),
                         "accuracy_min": min(accs), "accuracy_max": max(accs)})
    return rows


def accuracy_vs_keep(ctx: Context, methods=METHODS + ABLATIONS, keeps=KEEPS) -> list[Path]:
    rows = accuracy_rows(ctx, methods, keeps)
    base = rows[0]
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.4))
    for ax in axes:  # more methods than the default 10 colours: no two lines share one
        ax.set_prop_cycle(color=plt.cm.tab20.colors)
    for m in dict.fromkeys(r["method"] for r in rows[1:]):
        mine = [r for r in rows if r["method"] == m]
        style = dict(ls=":" if m in ABLATIONS else "--" if m in BASELINES else "-",
                     color={"random": "grey", "uniform": "black", "pool": "saddlebrown"}.get(m), marker="s" if m in BASELINES else "o", ms=4)
        acc = np.array([r["accuracy"] for r in mine])
        err = np.clip([acc - [r["acc_low"] for r in mine], [r["acc_high"] for r in mine] - acc], 0, None)  # rounding at p = 0, 1
        label = m + (f" (mean of {len(SEEDS)} seeds)" if "seeds" in mine[0] else "") + (" [baseline]" if m in BASELINES else "")
        line = axes[0].errorbar([r["flops_ratio"] for r in mine], acc, yerr=err, capsize=2, lw=1.2, label=label, **style)
        for r in mine:
            axes[0].annotate(f"{r['keep']:g}", (r["flops_ratio"], r["accuracy"]), textcoords="offset points",
                             xytext=(3, 3), fontsize=6, color=line[0].get_color())
        axes[1].errorbar([r["keep"] for r in mine], acc, yerr=err, capsize=2, lw=1.2, label=label, **style)
    for ax in axes:
        ax.axhline(base["accuracy"], color="black", ls="--", lw=1, label=f"unpruned ({base['accuracy']:.3f})")
        ax.set_ylabel("exact-match accuracy (95 % Wilson interval)")
    axes[0].set_xlabel("measured prefill FLOPs / unpruned (point labels: keep)")
    axes[0].set_title("accuracy at equal compute", fontsize=10)
    axes[1].set_xscale("log")
    axes[1].set_xticks(keeps, [f"{k:g}" for k in keeps])
    axes[1].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # only the keep ratios are labelled
    axes[1].set_xlabel("share of image tokens kept")
    axes[1].set_title("accuracy at equal keep", fontsize=10)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{ctx.vlm.name}: accuracy vs compute, n = {len(ctx.samples)} held-out samples per point", fontsize=10)
    paths = save(fig, ctx.out, "accuracy_vs_keep")
    paths.append(write_csv(ctx.out / "accuracy_vs_keep.csv", [{k: v for k, v in r.items() if k != "hits"} for r in rows]))
    return paths


def _row(r: dict, base: dict) -> dict:
    from .analysis.stats import wilson

    low, high = wilson(sum(r["hits"]), len(r["hits"]))  # a seeded method: its seeds' answers pooled
    return {"accuracy": r["accuracy"], "acc_low": low, "acc_high": high, "n": r["samples"],
            "flops_ratio": r["flops_ratio"], "prefill_s": r["prefill_s"],
            "time_ratio": r["prefill_s"] / base["prefill_s"] if base["prefill_s"] else float("nan"),
            **{f"acc/{t}": v for t, v in r["per_type"].items()}, "hits": r["hits"]}


def findings_rows(ctx: Context) -> list[dict]:
    from . import findings as fd

    scores = _scores(ctx) if ctx.vlm.adapter.has_cls else {"rows": []}
    return fd.findings(ctx, scores, inflection_result(ctx))


def findings(ctx: Context) -> list[Path]:
    from . import findings as fd

    rows = findings_rows(ctx)
    path = atomic_write(ctx.out / "findings.md", lambda tmp: tmp.write_text(fd.markdown(rows, ctx.vlm.name, len(ctx.samples))))
    return [path, write_json(ctx.out / "findings.json", rows)]


# What each figure computes from the model, run by every process before the main one draws it
# (the figure functions then find it in cache/ or in finished collections).
STATISTICS = {
    "positional_bias": _task_maps,
    "inflection": inflection_result,
    "saliency_auc": _scores, "t2i_similarity": _scores, "coverage": _scores,
    "accuracy_vs_keep": accuracy_rows,
    "findings": findings_rows,
}


def make_figures(vlm, data: str | Path, out: str | Path, *, only: list[str] | None = None, samples: int = 200,
                 batch_size: int = 8, progress: bool = True, processes: Processes = ONE,
                 log=print) -> dict[str, list[Path]]:
    """Write the chosen figures (all by default) and return the files each produced.

    processes: with several (`accelerate launch -m vtanalysis figures`), every process computes its
        part of each figure's statistics (collections, scores, evaluations; merged as in one
        process), then the main process draws the figures and returns them; the others return {}."""
    names = list(only) if only else list(FIGURES)
    unknown = set(names) - set(FIGURES)
    if unknown:
        raise VTAError(f"unknown figure(s) {sorted(unknown)}; figures: {', '.join(FIGURES)}.")
    if samples < 1:
        raise VTAError(f"--samples must be >= 1, got {samples}.")
    out = output_folder(out)
    ctx = Context(vlm, Path(data), out, samples, batch_size, progress, processes)
    drawing = ctx.alone()
    made = {}
    for name in names:
        if processes.main:
            log(f"[figures] {name}")
        if processes.world > 1 and name in STATISTICS:
            STATISTICS[name](ctx)
        if processes.main:
            made[name] = globals()[name](drawing)
    if not processes.main:
        return made
    write_json(out / "figures.json", {"model": vlm.name, "data": str(data), "samples": samples,
                                      "files": {k: [p.name for p in v] for k, v in made.items()}})
    return made
