"""AdaptPrune (Luan et al., "Multi-Cue Adaptive Visual Token Pruning", Sec. 4): adaptive NMS over
attention, spatial distance and key similarity.

Official defaults (authors' code, LLaVA-1.5): prune at K = 2, keep 10 %, score = last-row
attention of layer K-1 (head-mean) on the grid; distribution correction by a centred Gaussian
(coordinates linspace(-size//2, size//2, size) per axis, sigma 12, max 1); keys = k_proj of layer K
on the hidden states entering layer K (before the input norm, no RoPE), L2-normalised, heads
concatenated; greedy NMS: pick the argmax, then multiply every token j within grid distance
<= window by

    1 - exp(-d_ij^2 / (2 sigma_d^2)) * exp(-(1 - cos_ij)^2 / (2 sigma_s^2))        (Sec. 4.3)

Ablations (Table 4): attention only (= FastV), + correction (`sigma_d -> 0`), + distance
(`sigma_s=None`), + similarity (full).

Fidelity: run against the authors' released selection on shared inputs (issue 41), the kept set
equals theirs on every case tried, for the full method and each Table 4 ablation
(bzluan/AdaptPrune, `llava/model/language_model/adaptprune.py`, `FastVLlamaModel.forward` with its
nested `create_gaussian_mask` and `adapt_nms_2d`; count int(576 x ratio), our "floor" rounding).
Differences: the NMS runs in parallel rounds that give the greedy loop's picks (`nms_union`;
`adaptive_nms_reference` is the per-step loop), suppression never crosses a sub-image boundary
(the paper's appendix; their file handles one 24 x 24 grid), and a token is never picked twice
(their loop can, in degenerate cases).
"""
from __future__ import annotations

import functools
import math

import torch

from ..._core.perf import deliberate_sync
from ...errors import VTAError
from ..plans import single_stage
from ..registry import Method, Need, register

LAYER = 2
KEEP = 0.1


def center_prior(grid: tuple[int, int], sigma: float, device=None) -> torch.Tensor:
    """Gaussian mask [h, w] centred on the grid, max 1 (coordinates linspace(-size//2, size//2, size))."""
    h, w = grid
    y = torch.linspace(-(h // 2), h // 2, h, device=device)
    x = torch.linspace(-(w // 2), w // 2, w, device=device)
    d2 = y[:, None] ** 2 + x[None, :] ** 2
    mask = torch.exp(-d2 / (2 * sigma**2))
    return mask / mask.max()


@functools.lru_cache(maxsize=16)
def _offsets(window: float, sigma_d: float):
    """The window offsets (dy, dx) at which a pick can suppress a token: d <= window, a non-zero
    spatial decay exp(-d^2 / (2 sigma_d^2)), the pick itself excluded (sigma_d = 0: none).
    Returns offsets [K, 2], their decay [K], and whether each points at a higher row-major index [K]."""
    r = int(math.floor(window))
    pairs = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)
             if dy * dy + dx * dx <= window**2 and (dy, dx) != (0, 0)]
    d2 = torch.tensor([dy * dy + dx * dx for dy, dx in pairs], dtype=torch.float32)
    spatial = torch.exp(-d2 / (2 * sigma_d**2)) if sigma_d > 0 else torch.zeros_like(d2)
    offsets = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)
    reach = spatial > 0
    after = (offsets[:, 0] > 0) | ((offsets[:, 0] == 0) & (offsets[:, 1] > 0))
    return offsets[reach], spatial[reach], after[reach]


@functools.lru_cache(maxsize=32)
def _neighbours(grids: tuple, n: int, window: float, sigma_d: float, device):
    """Neighbour table over the union of grids: idx [n, K] (global columns; n = "none", a sentinel),
    spatial decay [n, K] and `after` [K] (the neighbour has the higher index). Columns outside every
    grid (LLaVA-NeXT newlines) have no neighbours."""
    offsets, spatial, after = (t.to(device) for t in _offsets(window, sigma_d))
    idx = torch.full((n, len(offsets)), n, dtype=torch.long, device=device)
    for start, h, w in grids:
        yy, xx = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        ny, nx = yy.reshape(-1, 1) + offsets[:, 0], xx.reshape(-1, 1) + offsets[:, 1]
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        idx[start:start + h * w] = torch.where(inside, start + ny * w + nx, n)
    return idx, torch.where(idx < n, spatial, 0.0), after


def _neighbour_cosines(keys: torch.Tensor, idx: torch.Tensor, grids, window: float) -> torch.Tensor:
    """cos(k_j, k_p) for every column j and neighbour p = idx[j, k]: [n, K] (0 at sentinels).

    From bands of each grid's Gram matrix: a neighbour of grid rows a..b-1 is at most `window`
    grid rows away, so a chunk of rows needs only that band (a few large matmuls; gathering the
    K neighbours' keys instead moves K times the keys through memory and is slower on CPU and GPU).
    """
    n = idx.shape[0]
    unit = torch.nn.functional.normalize(keys.float(), dim=-1)
    cos = torch.zeros(idx.shape, device=idx.device)
    r = int(math.floor(window))
    for start, h, w in grids:
        span, reach = h * w, r * w + r  # a neighbour is at most r rows and r columns away
        chunk = max(reach, 256)
        for a in range(start, start + span, chunk):
            b = min(a + chunk, start + span)
            lo, hi = max(start, a - reach), min(start + span, b + reach)
            band = unit[a:b] @ unit[lo:hi].T  # [b - a, hi - lo]
            local = (idx[a:b] - lo).clamp(0, hi - lo - 1)
            cos[a:b] = torch.where(idx[a:b] < n, band.gather(1, local), 0.0)
    return cos


def _first_check(keep: int) -> int:
    """Rounds run before the picks are first checked for being final. On attention-like scores
    about 2.5 sqrt(keep) rounds suffice (measured on benchmarks/nms_selection.py's three grids at
    keep 10 %: 11, 27 and 60 rounds); extra rounds never change the result, they only cost time."""
    return math.ceil(2.5 * math.sqrt(keep)) + 1


def nms_union(scores: torch.Tensor, keys: torch.Tensor | None, grids, keep: int, *, center_sigma: float | None = 12.0,
              sigma_d: float = 1.5, sigma_s: float | None = 0.05, window: float = 5.0) -> torch.Tensor:
    """The greedy adaptive NMS over several grids at once, on the scores' device, in parallel rounds.

    Greedy (Sec. 4.3) picks the argmax of the running scores, then multiplies each neighbour j
    within `window` by 1 - exp(-d^2 / (2 sigma_d^2)) exp(-(1 - cos_pj)^2 / (2 sigma_s^2)).
    Scores only fall and the factors commute, so a token whose running score beats every unpicked
    neighbour's (ties: the lower index wins, as argmax) is picked by the greedy loop before any of
    them, at its current score. Each round picks all such local maxima and applies all their
    suppressions at once. A pick whose score exceeds every unpicked score is final (no later pick
    can beat it); once `keep` picks are final, the greedy loop's first `keep` picks are the top
    `keep` of all picks by pick-time score. The loop checks that condition on the host only every
    few rounds, so a selection makes a handful of host round trips whatever `keep` is.

    Args:
        scores: [n] raw scores over all columns (before the Gaussian correction).
        keys: [n, D] keys (None when sigma_s is None).
        grids: (start, h, w) per grid, row-major; columns outside every grid have no neighbours
            and compete by their raw score (suppression never crosses a grid boundary).
        keep: tokens to keep, 1 <= keep <= n.
    Returns:
        LongTensor [keep] of columns, ascending, on the scores' device.
    """
    n = scores.numel()
    device = scores.device
    running = scores.float().clone()
    if center_sigma is not None:
        for start, h, w in grids:
            running[start:start + h * w] *= center_prior((h, w), center_sigma, device).flatten()
    idx, factor, after = _neighbours(tuple(tuple(g) for g in grids), n, window, sigma_d, device)  # cached per layout
    if idx.shape[1] == 0:  # nothing suppresses anything (sigma_d = 0): the corrected top-k
        gain = running
    else:
        gain = _rounds(running, idx, factor, after, keys, grids, keep, sigma_s, window)
    order = torch.sort(gain, descending=True, stable=True).indices  # ties: lower index first, as argmax
    return order[:keep].sort().values


def _rounds(running, idx, factor, after, keys, grids, keep, sigma_s, window) -> torch.Tensor:
    """The parallel rounds of `nms_union`; returns each token's score at pick time [n] (-inf: unpicked)."""
    n, device = running.numel(), running.device
    if sigma_s is not None:
        cos = _neighbour_cosines(keys, idx, grids, window)
        factor = factor * torch.exp(-(1 - cos) ** 2 / (2 * sigma_s**2))
    kept_share = 1 - factor  # what neighbour p leaves of j's score when p is picked
    neg_inf = torch.tensor(float("-inf"), device=device)
    # both = [current | just below current]: current holds running scores, -inf once picked, and a
    # sentinel -inf at n that missing neighbours point at. A local maximum must beat an earlier
    # neighbour strictly and a later one or tie with it (argmax ties go to the lower index); on
    # floats x >= s is x > nextafter(s, -inf), so one max over both halves decides both cases.
    both = torch.full((2 * (n + 1),), float("-inf"), device=device)
    current, below = both[: n + 1], both[n + 1:]
    current[:n] = running
    compare_at = torch.where(after, idx + (n + 1), idx)
    picked_now = torch.zeros(n + 1, dtype=torch.bool, device=device)
    gain = torch.full((n,), float("-inf"), device=device)
    rounds, check_at = 0, _first_check(keep)
    with torch.inference_mode():
        while True:
            torch.nextafter(current, neg_inf, out=below)
            mine, is_max = current[:n], picked_now[:n]
            torch.gt(mine, both[compare_at].amax(1), out=is_max)
            gain = torch.where(is_max, mine, gain)
            shrunk = mine * torch.where(picked_now[idx], kept_share, 1.0).prod(1)
            torch.where(is_max, neg_inf, shrunk, out=current[:n])
            rounds += 1
            if rounds >= min(check_at, n):
                # host check every so often: a pick above every unpicked score is final
                with deliberate_sync(device):
                    if rounds >= n or bool((gain > current.max()).sum() >= keep):
                        break
                check_at = rounds + max(4, rounds // 2)
    return gain


def adaptive_nms(scores: torch.Tensor, keys: torch.Tensor, grid: tuple[int, int], keep: int, *,
                 center_sigma: float | None = 12.0, sigma_d: float = 1.5, sigma_s: float | None = 0.05,
                 window: float = 5.0) -> torch.Tensor:
    """Greedy adaptive NMS (paper Sec. 4.3) over one image grid.

    Args:
        scores: [N] attention scores before the Gaussian correction, N = h * w, row-major.
        keys: [N, D] token keys (normalised here; cosine similarity = dot product).
        grid: (h, w).
        keep: tokens to keep, 1 <= keep <= N.
        center_sigma: sigma of the centred Gaussian correction (Sec. 4.1); None turns it off.
        sigma_d: spatial decay width; sigma_d -> 0 suppresses only the pick itself (= corrected top-k).
        sigma_s: similarity decay width; None drops the similarity term (distance-only ablation).
        window: suppression radius in grid units (Euclidean, includes the pick).
    Returns:
        LongTensor [keep] of picked indices in ascending order, no duplicates (a picked token is
        never picked again, even where the official loop's degenerate cases would).
    Same picks as the per-step loop (`adaptive_nms_reference`), computed by `nms_union`.
    """
    h, w = grid
    if h * w != scores.numel():
        raise ValueError(f"grid {grid} has {h * w} cells but scores has {scores.numel()} entries.")
    return nms_union(scores, keys, [(0, h, w)], keep, center_sigma=center_sigma, sigma_d=sigma_d, sigma_s=sigma_s,
                     window=window)


def adaptive_nms_reference(scores, keys, grid, keep, *, center_sigma=12.0, sigma_d=1.5, sigma_s=0.05, window=5.0):
    """The straightforward per-step loop with the same semantics (for tests and the speed benchmark):
    every step recomputes distance and similarity factors against all N tokens."""
    h, w = grid
    running = scores.float().clone()
    if center_sigma is not None:
        running = running * center_prior(grid, center_sigma, scores.device).flatten()
    unit = torch.nn.functional.normalize(keys.float(), dim=-1)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    coords = torch.stack([yy.flatten(), xx.flatten()], -1).float()
    picked = []
    for _ in range(keep):
        masked = running.clone()
        masked[picked] = float("-inf")
        i = int(torch.argmax(masked))
        picked.append(i)
        d2 = ((coords - coords[i]) ** 2).sum(-1)
        spatial = torch.exp(-d2 / (2 * sigma_d**2)) if sigma_d > 0 else (d2 == 0).float()
        sim = torch.exp(-((1 - unit @ unit[i]) ** 2) / (2 * sigma_s**2)) if sigma_s is not None else 1.0
        factor = torch.where(d2 <= window**2, spatial * sim, torch.zeros_like(d2))
        running = running * (1 - factor)
    return torch.tensor(sorted(picked))


def select(scores: torch.Tensor, keys: torch.Tensor | None, grids: list[tuple[int, int, int]], keep: int, **knobs):
    """AdaptPrune over several grids (LLaVA-NeXT base + tiles, multi-image) with one budget.

    Paper appendix: one budget for all tokens; suppression never crosses a sub-image boundary.

    Args:
        scores: [N] over all image tokens (columns of the `TokenLayout`).
        keys: [N, D] (None when sigma_s is None: without the similarity decay keys are not read).
        grids: (start, h, w) per grid; columns not in any grid (newline tokens) compete by raw score.
        keep: total budget.
    Returns:
        LongTensor [keep] of column indices, ascending, on the scores' device.
    """
    return nms_union(scores, keys, grids, keep, **knobs)


def choose_adaptprune(center_sigma=12.0, sigma_d=1.5, sigma_s=0.05, window=5.0):
    def choose(inputs, keep, stage):
        if inputs.grids is None:
            raise VTAError("AdaptPrune needs intact image grids: it prunes in a single stage.")
        return select(inputs.last_row, inputs.keys, inputs.grids, keep, center_sigma=center_sigma,
                                 sigma_d=sigma_d, sigma_s=sigma_s, window=window)
    return choose


register(Method(name="adaptprune", summary="AdaptPrune: corrected attention + adaptive NMS over distance and key similarity",
                where="llm", needs=(Need.LAST_ROW, Need.KEYS), choose=choose_adaptprune(), plan=single_stage(LAYER)))
register(Method(name="adaptprune-correction", summary="AdaptPrune ablation (Table 4 b): Gaussian correction only",
                where="llm", needs=(Need.LAST_ROW,), choose=choose_adaptprune(sigma_d=0.0, sigma_s=None),
                plan=single_stage(LAYER)))
register(Method(name="adaptprune-distance", summary="AdaptPrune ablation (Table 4 c): correction + distance decay",
                where="llm", needs=(Need.LAST_ROW,), choose=choose_adaptprune(sigma_s=None), plan=single_stage(LAYER)))
