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
"""
from __future__ import annotations

import math

import torch

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


def _neighbour_table(grid: tuple[int, int], window: float, sigma_d: float, device):
    """For every token, its neighbours within `window` and their spatial decay factors.

    Returns idx [N, K] and factor [N, K] = exp(-d^2 / (2 sigma_d^2)) (sigma_d = 0 keeps only d = 0).
    Out-of-grid entries point at the token itself with factor 0; the NMS overwrites a pick's own
    score right after each step, so those writes are harmless.
    """
    h, w = grid
    r = int(math.floor(window))
    dy, dx = torch.meshgrid(torch.arange(-r, r + 1, device=device), torch.arange(-r, r + 1, device=device),
                            indexing="ij")
    d2 = (dy**2 + dx**2).flatten()
    inside = d2 <= window**2
    dy, dx, d2 = dy.flatten()[inside], dx.flatten()[inside], d2[inside].float()
    yy, xx = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ny, nx = yy.flatten()[:, None] + dy, xx.flatten()[:, None] + dx
    ok = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
    idx = torch.where(ok, ny * w + nx, (yy.flatten() * w + xx.flatten())[:, None].expand_as(ny))
    spatial = torch.exp(-d2 / (2 * sigma_d**2)) if sigma_d > 0 else (d2 == 0).float()
    return idx, torch.where(ok, spatial.expand_as(ok), torch.zeros(()))


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
    Cost: O(keep * window^2 * D): each step touches only the pick's window, not all N tokens.
    """
    order, _ = _nms(scores, keys, grid, keep, center_sigma=center_sigma, sigma_d=sigma_d, sigma_s=sigma_s,
                    window=window)
    return order.sort().values


def _nms(scores, keys, grid, keep, *, center_sigma=12.0, sigma_d=1.5, sigma_s=0.05, window=5.0):
    """Picks in pick order [keep] and each pick's running score when it was picked [keep]."""
    h, w = grid
    n = scores.numel()
    if h * w != n:
        raise ValueError(f"grid {grid} has {h * w} cells but scores has {n} entries.")
    device = scores.device
    running = scores.float().clone()
    if center_sigma is not None:
        running = running * center_prior(grid, center_sigma, device).flatten()
    if sigma_s is not None:  # keys are read only for the similarity decay
        keys = keys.float()
        norms = keys.norm(dim=-1).clamp_min(1e-12)  # cosine = k_i . k_j / (|k_i| |k_j|), no normalised copy
    nb_idx, nb_factor = _neighbour_table(grid, window, sigma_d, device)
    neg_inv = -1.0 / (2 * sigma_s**2) if sigma_s is not None else None
    order, gains = [], []
    with torch.inference_mode():  # no autograd bookkeeping in the per-step loop
        for _ in range(keep):
            i = int(torch.argmax(running))
            order.append(i)
            gains.append(running[i].item())
            nbr, factor = nb_idx[i], nb_factor[i]
            if neg_inv is not None:
                cos = torch.index_select(keys, 0, nbr).mv(keys[i]).div_(norms[nbr] * norms[i])
                factor = factor * cos.sub_(1).square_().mul_(neg_inv).exp_()  # (1 - cos)^2 == (cos - 1)^2
            running[nbr] *= 1 - factor
            running[i] = float("-inf")  # never pick a token twice
    return torch.tensor(order, dtype=torch.long, device=device), torch.tensor(gains)


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


def select(scores: torch.Tensor, keys: torch.Tensor, grids: list[tuple[int, int, int]], keep: int, **knobs):
    """AdaptPrune over several grids (LLaVA-NeXT base + tiles, multi-image) with one budget.

    Paper appendix: one budget for all tokens; suppression never crosses a sub-image boundary.
    Each grid runs its own NMS and the candidates are merged greedily by their score at pick
    time, which is what one NMS over the union gives when no suppression crosses grids.

    Args:
        scores: [N] over all image tokens (columns of the `TokenLayout`).
        keys: [N, D] (None when sigma_s is None: without the similarity decay keys are not read).
        grids: (start, h, w) per grid; columns not in any grid (newline tokens) compete by raw score.
        keep: total budget.
    Returns:
        LongTensor [keep] of column indices, ascending.
    """
    candidates = []  # (score at pick time, column)
    covered = torch.zeros(scores.numel(), dtype=torch.bool)
    for start, h, w in grids:
        cols = slice(start, start + h * w)
        covered[cols] = True
        k = min(keep, h * w)
        # running scores only fall, so each grid's picks come in non-increasing score order and
        # merging by pick-time score equals one NMS over the union (no suppression across grids)
        picks, gains = _nms(scores[cols], None if keys is None else keys[cols], (h, w), k, **knobs)
        candidates += [(g, start + p) for p, g in zip(picks.tolist(), gains.tolist())]
    rest = (~covered).nonzero().flatten().tolist()
    candidates += [(float(scores[c]), c) for c in rest]
    candidates.sort(key=lambda t: -t[0])
    return torch.tensor(sorted(c for _, c in candidates[:keep]), dtype=torch.long)
