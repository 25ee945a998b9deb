"""Cross-modal attention shift and its inflection layers (AdaptInfer; our design, see METHODS.md).

Per-layer curves over a dataset (means over samples of `collect.dataset.layer_shift` and the
image mass, read from a collection's samples.jsonl):
    image_mass[l]     sum_n A_l[last, n]: how much the last prompt token attends to the image
    js[l]             Jensen-Shannon divergence of the last row's image distribution, layers l-1 -> l
    topk_overlap[l]   share of the top-10% image tokens of layer l-1 still in the top 10% at l

Inflection layers are change points of these curves: each curve is fitted with a (discontinuous)
piecewise-linear model by exact dynamic programming, and the number of segments K is chosen by
BIC with the noise level sigma estimated from the curve itself (robust spread of its second
differences, which steps and kinks barely move):
    BIC(K) = SSE_K / sigma^2 + 2 * 3 (K - 1) log n
(BIC's penalty doubled, because sigma itself is an estimate: a few noisy layers must not pass
for a regime change).
A change point b means a new regime starts at layer b. Its confidence is the share of the
fitted error it explains: 1 - SSE_K / SSE_(K without b). `schedule_from_inflections` turns the
layers into an AdaptInfer-style multi-stage schedule for the pruning engine.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import VTAError
from ..prune.budget import keep_count

CURVES = {"image_mass": "last_row_image_mass", "js": "last_row_js", "topk_overlap": "last_row_topk_overlap"}


def shift_curves(collection: str | Path) -> dict[str, np.ndarray]:
    """Mean per-layer curves of a collection folder: {name: [L]} plus "layers" (model indices)."""
    path = Path(collection) / "samples.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    if not rows:
        raise VTAError(f"'{collection}' has no collected samples; run `vtanalysis collect` into it first.")
    if CURVES["js"] not in rows[0]:
        raise VTAError(f"'{collection}' was collected by an older vtanalysis without layer-shift curves; "
                       "collect it again into a new folder.")
    summary = json.loads((Path(collection) / "summary.json").read_text())
    out = {name: np.mean([r[key] for r in rows], axis=0) for name, key in CURVES.items()}
    out["layers"] = np.asarray(summary["layers"])
    return out


def _segment_cost(y: np.ndarray) -> np.ndarray:
    """cost[i, j] = SSE of the least-squares line through y[i:j] (j > i; 0 for 1-2 points)."""
    n = len(y)
    cost = np.zeros((n + 1, n + 1))
    for i in range(n):
        for j in range(i + 3, n + 1):
            x = np.arange(i, j, dtype=float)
            coef = np.polyfit(x, y[i:j], 1)
            cost[i, j] = float(((np.polyval(coef, x) - y[i:j]) ** 2).sum())
    return cost


def _best_split(cost: np.ndarray, n: int, k: int, min_size: int) -> tuple[float, list[int]]:
    """Exact k-segment split of 0..n minimising the summed cost: (SSE, segment starts after 0)."""
    best = {(0, 0): (0.0, [])}
    for segs in range(1, k + 1):
        for end in range(segs * min_size, n + 1):
            options = [(best[(segs - 1, s)][0] + cost[s, end], best[(segs - 1, s)][1] + ([s] if s else []))
                       for s in range((segs - 1) * min_size, end - min_size + 1) if (segs - 1, s) in best]
            if options:
                best[(segs, end)] = min(options, key=lambda o: o[0])
    return best.get((k, n), (math.inf, []))


def noise_level(y: np.ndarray) -> float:
    """Robust noise sd of a curve: MAD of its second differences (var = 6 sigma^2 for white noise),
    floored at 1e-6 of the curve's scale so that noise-free curves stay well defined."""
    from scipy.stats import median_abs_deviation

    d2 = np.diff(y, 2)
    mad = float(median_abs_deviation(d2, scale="normal")) if len(d2) else 0.0
    return max(mad / math.sqrt(6), 1e-6 * (float(np.abs(y).max()) + 1e-12))


@dataclass
class Inflection:
    layer: int  # model layer where the new regime starts
    confidence: float  # 0..1, share of the fitted error this change point explains
    curve: str


def change_points(y, *, max_changes: int = 4, min_size: int = 2, curve: str = "", layers=None) -> list[Inflection]:
    """Change points of a 1-D curve (piecewise-linear fit, segments chosen by BIC; see module doc).

    Args:
        y: [L] values per layer.
        max_changes: the most change points considered.
        min_size: fewest layers in a segment.
        layers: model layer index of each entry (default 0..L-1).
    Returns:
        inflections sorted by layer; [] for a curve one line explains.
    """
    y = np.asarray(y, dtype=float)
    n = len(y)
    layers = list(range(n)) if layers is None else list(layers)
    sigma2 = noise_level(y) ** 2
    floor = n * sigma2 * 1e-9  # keeps confidences finite on noise-free curves
    cost = _segment_cost(y)
    fits = {k: _best_split(cost, n, k, min_size) for k in range(1, min(max_changes + 1, n // min_size) + 1)}
    bic = {k: sse / sigma2 + 6 * (k - 1) * math.log(n) for k, (sse, _) in fits.items()}
    k = min(bic, key=bic.get)
    sse, starts = fits[k]
    out = []
    for b in starts:
        merged = [s for s in starts if s != b]
        bounds = [0, *merged, n]
        without = sum(cost[a, c] for a, c in zip(bounds, bounds[1:]))
        out.append(Inflection(layers[b], float(1 - (sse + floor) / (without + floor)), curve))
    return out


def inflection_layers(curves: dict[str, np.ndarray], *, max_changes: int = 4, min_size: int = 2,
                      min_confidence: float = 0.5) -> list[Inflection]:
    """Change points agreed over the curves: per curve detections with confidence >= min_confidence,
    detections within one layer of each other merged (the most confident kept), sorted by layer."""
    found = [c for name in CURVES if name in curves
             for c in change_points(curves[name], max_changes=max_changes, min_size=min_size, curve=name,
                                    layers=curves.get("layers")) if c.confidence >= min_confidence]
    merged: list[Inflection] = []
    for c in sorted(found, key=lambda c: -c.confidence):
        if all(abs(c.layer - m.layer) > 1 for m in merged):
            merged.append(c)
    return sorted(merged, key=lambda c: c.layer)


def schedule_from_inflections(inflections, n_layers: int, n_image: int, keep) -> dict:
    """A multi-stage pruning schedule from inflection layers, for the engine's AdaptInfer planner.

    Pruning happens after each inflection layer b (the stage starts at b + 1). Stage i keeps
    c_i = round(n_image * r^i) image tokens, with r in (0, 1] chosen by bisection so that the
    image-token count averaged over all layers (AdaptInfer's "budget") equals B = keep_count(keep):
        (s_1 n_image + sum_i (s_(i+1) - s_i) c_i) / n_layers = B,     s_(S+1) = n_layers.
    Returns {"layers": [s_1, ...], "counts": [c_1, ...]}: pass as knobs to `prune.run(..., "adaptinfer")`.
    """
    starts = sorted({(c.layer if isinstance(c, Inflection) else int(c)) + 1 for c in inflections})
    if not starts:
        raise VTAError("no inflection layers: the curves show no regime change; use a single-stage method (fastv).")
    if starts[-1] >= n_layers:
        raise VTAError(f"inflection layer {starts[-1] - 1} is the last layer of {n_layers}: nothing is left to prune.")
    budget = keep_count(keep, n_image)
    spans = np.diff([*starts, n_layers])

    def average(r: float) -> float:
        counts = [n_image * r ** (i + 1) for i in range(len(starts))]
        return (starts[0] * n_image + float(np.dot(spans, counts))) / n_layers

    if average(0.0) > budget:
        raise VTAError(f"budget {budget} is below {average(0.0):.0f}, the average of keeping every image token "
                       f"until layer {starts[0]}; raise keep or use an earlier first inflection.")
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if average(mid) < budget else (lo, mid)
    counts = [max(0, round(n_image * lo ** (i + 1))) for i in range(len(starts))]
    return {"layers": starts, "counts": counts}
