"""`vtanalysis causal`: causal importance maps and tables over a dataset folder, resumable.

Per batch of samples, one JSON part in OUT/parts/ (written atomically; a rerun skips the parts that
exist, so an interrupted run resumes where it stopped): the explained answer, each sample's
`importance` map, and, when asked, each method's `agreement` with the oracle at `keep` and the
`knockout` effects of the named edge sets by layer window. When every part exists the tables are
merged: importance.jsonl (one line per sample), agreement.csv, knockout.csv, summary.json, and
importance.png (the first samples' maps over their images, each method's kept tokens outlined).
"""
from __future__ import annotations

import json
from pathlib import Path

from .._core.files import atomic_write, output_folder
from ..errors import VTAError

EDGE_SETS = ("image->question", "image->last", "question->last", "image->text")


def analyse(vlm, data: str | Path, out: str | Path, *, how: str = "drop", layer: int = 0, block: int = 1,
            measure: str = "kl", methods: tuple[str, ...] = (), keep: float | int = 0.1, knockout: bool = False,
            window: int | None = None, batch_size: int = 4, limit: int | None = None, progress: bool = True) -> dict:
    """Write the causal tables for the samples of `data` into `out` (see the module); returns the summary.

    Args:
        vlm: a `VLM`. data: a dataset folder (images + questions.jsonl).
        how, layer, block, measure: the ablation `importance` maps (see `causal.importance`).
        methods, keep: registered methods scored by `causal.agreement` at `keep` (one oracle search per
            sample and distinct kept count).
        knockout: also knock out `EDGE_SETS` in sliding windows of `window` layers (default: a quarter
            of the depth).
        batch_size, limit, progress: samples per part, the first N samples only, a progress bar.
    """
    from tqdm.auto import tqdm

    from ..data.dataset import read_samples
    from ..prune.registry import get

    for m in methods:
        get(m)  # an unknown method fails before any work
    out = output_folder(out)
    parts = out / "parts"
    parts.mkdir(exist_ok=True)
    samples = read_samples(data)[:limit]
    if not samples:
        raise VTAError(f"'{data}' has no samples; see `vtanalysis.data.dataset` for the folder format.")
    settings = {"model": vlm.name, "data": str(data), "how": how, "layer": layer, "block": block, "measure": measure,
                "methods": list(methods), "keep": keep, "knockout": knockout, "window": window,
                "batch_size": batch_size, "limit": limit}
    _check_settings(out / "settings.json", settings)
    starts = range(0, len(samples), batch_size)
    for start in tqdm(starts, desc="causal", unit="batch", disable=not progress):
        path = parts / f"batch-{start // batch_size:05d}.json"
        if not path.is_file():
            part = _part(vlm, samples[start:start + batch_size], settings)
            atomic_write(path, lambda tmp, part=part: tmp.write_text(json.dumps(part)))
    rows = [row for start in starts for row in json.loads((parts / f"batch-{start // batch_size:05d}.json").read_text())]
    return _merge(vlm, samples, rows, out, settings)


def _check_settings(path: Path, settings: dict) -> None:
    """A folder's parts were computed with its settings: a rerun with others would mix them."""
    if path.is_file():
        before = json.loads(path.read_text())
        if before != settings:
            changed = sorted(k for k in settings if before.get(k) != settings[k])
            raise VTAError(f"'{path.parent}' holds a causal run with other settings ({', '.join(changed)}); "
                           "use another --out folder, or delete its parts/ to start over.")
    else:
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(settings, indent=1)))


def _part(vlm, samples, settings: dict) -> list[dict]:
    from . import agreement, importance, knockout, reference
    from .oracle import oracle_for_counts
    from .selections import method_columns

    batch = vlm.prepare([s.image for s in samples], [s.question for s in samples])
    ref = reference(vlm, batch)
    maps = importance(vlm, batch, settings["how"], settings["layer"], settings["block"], settings["measure"], ref=ref)
    rows = [{"id": s.id, "question": s.question, "answer": s.answer, "explained": a, "image": str(s.image),
             "n_image": lay.n_image_tokens, "importance": m[:lay.n_image_tokens].tolist(), "methods": {},
             "knockout": {}} for s, a, lay, m in zip(samples, ref.answers, batch.layouts, maps)]
    searched = {}  # the oracle per kept counts, shared by the methods that keep as many
    for method in settings["methods"]:
        kept = method_columns(vlm, batch, method, settings["keep"])
        counts = tuple(len(k) for k in kept)
        if counts not in searched:
            searched[counts] = oracle_for_counts(vlm, batch, counts, ref, layer=settings["layer"],
                                                 measure=settings["measure"])
        a = agreement(vlm, batch, method, settings["keep"], layer=settings["layer"], ref=ref, measure=settings["measure"],
                      oracle_sets=searched[counts], importance_scores=maps if settings["how"] == "drop" else None)
        for b, row in enumerate(rows):
            row["methods"][method] = {k: float(getattr(a, k)[b]) for k in ("effect", "random", "oracle", "recall",
                                                                          "spearman", "deletion_area",
                                                                          "insertion_area")}
            row["methods"][method]["kept"] = kept[b].tolist()
    if settings["knockout"]:
        depth = vlm.num_layers
        k = settings["window"] or max(1, round(depth / 4))
        for start in range(0, depth - k + 1):
            for edge in EDGE_SETS:
                kl = knockout(vlm, batch, edge, range(start, start + k), ref=ref).kl
                for b, row in enumerate(rows):
                    row["knockout"].setdefault(edge, []).append(float(kl[b]))
    return rows


def _merge(vlm, samples, rows: list[dict], out: Path, settings: dict) -> dict:
    import csv

    import numpy as np

    atomic_write(out / "importance.jsonl", lambda tmp: tmp.write_text(
        "".join(json.dumps({k: r[k] for k in ("id", "question", "answer", "explained", "n_image", "importance")}) + "\n"
                for r in rows)))
    summary = {"samples": len(rows), "settings": settings,
               "importance_mean": float(np.mean([np.mean(r["importance"]) for r in rows])),
               "methods": {}, "knockout": {}}
    if settings["methods"]:
        table = [{"id": r["id"], "method": m, **{k: v for k, v in r["methods"][m].items() if k != "kept"}}
                 for r in rows for m in settings["methods"]]
        _csv(out / "agreement.csv", table, csv)
        for m in settings["methods"]:
            mine = [r["methods"][m] for r in rows]
            effect, rand, best = (np.mean([x[k] for x in mine]) for k in ("effect", "random", "oracle"))
            summary["methods"][m] = {"effect": effect, "random": rand, "oracle": best,
                                     "share": (rand - effect) / (rand - best) if rand > best else None,
                                     "recall": float(np.mean([x["recall"] for x in mine]))}
    if settings["knockout"]:
        table = [{"id": r["id"], "edge": e, "window_start": j, "kl": v}
                 for r in rows for e, values in r["knockout"].items() for j, v in enumerate(values)]
        _csv(out / "knockout.csv", table, csv)
        summary["knockout"] = {e: np.mean([r["knockout"][e] for r in rows], axis=0).tolist() for e in EDGE_SETS}
    atomic_write(out / "summary.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=1, default=float)))
    _figure(vlm, samples, rows, out, settings)
    return summary


def _csv(path: Path, table: list[dict], csv) -> None:
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(table[0]))
            w.writeheader()
            w.writerows(table)
    atomic_write(path, write)


def _figure(vlm, samples, rows: list[dict], out: Path, settings: dict, most: int = 6) -> None:
    """importance.png: the first samples' importance maps over their images (first grid), with the
    first method's kept tokens outlined."""
    import matplotlib.pyplot as plt

    from ..models.images import load_image
    from ..viz.overlay import draw_heat

    shown = rows[:most]
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.6), squeeze=False)
    method = settings["methods"][0] if settings["methods"] else None
    for ax, row in zip(axes[0], shown):
        image = load_image(row["image"])
        lay = vlm.prepare([image], [row["question"]]).layouts[0]
        grid = lay.grids[0]
        kept = row["methods"][method]["kept"] if method else None
        draw_heat(ax, image, grid, row["importance"], vlm.adapter.grid_extent(vlm.processor, grid, image.size),
                  kept_columns=kept, title=f"{row['question']}\n-> {row['explained']}")
    what = f"; cyan: {method}'s kept tokens at keep {settings['keep']}" if method else ""
    fig.suptitle(f"{vlm.name}: causal importance ({settings['measure']} of ablating each "
                 f"{'token' if settings['block'] == 1 else str(settings['block']) + 'x' + str(settings['block']) + ' block'}"
                 f", how={settings['how']}, layer {settings['layer']}){what}", fontsize=9, y=1.06)
    fig.tight_layout()
    fig.savefig(out / "importance.png", dpi=130, bbox_inches="tight")
    plt.close(fig)
