"""DART (Wen et al. 2025, "Stop looking for important tokens ... duplication matters more"), from
the authors' code (ZichenWen1/DART; read in its copy Chenfei-Liao/VTC-Bench `external/DART`,
`llava/model/language_model/modeling_llama_self.py`, `DART.get_retained_image_token`).

At layer K (2 on LLaVA-1.5, the authors' `--pruned_layer`), before it runs:
    pivots   the `image_pivots` image tokens and the `text_pivots` text tokens after the image with
             the largest L1 norm of layer K-1's keys (after RoPE, heads concatenated); 4 + 4
    pick     pivot by pivot, the image tokens least similar to it, cosine on the states entering
             layer K through the model's final norm, each from the tokens no pivot took before
    keep     the image pivots + the picks
No attention matrix is read: the method runs under SDPA as it is.

Differences from the authors' code, on purpose:
- `keep` counts every kept image token: the image pivots plus (keep - image pivots) picks split
  as evenly as possible over the pivots (the first ones take one more). The authors take
  floor(budget / pivots) per pivot on top of the image pivots (budget 128 keeps 4 + 8 x 16 = 132).
- Pivots are visited image pivots first, then text pivots, each by descending key norm. The
  authors visit them in the iteration order of a Python `set` of their sequence positions
  (`indices_set = set(image_indices + query_indices)`), which CPython makes deterministic (small
  ints hash to themselves, so it follows the positions modulo the table size) but which has no
  meaning for the method. The order matters because each pivot takes its tokens from those the
  earlier pivots left: up to 23 of the 132 kept tokens at budget 128 on LLaVA-1.5 (issue 41's
  run of their code), 0 to 14 of 132 on random 576-token inputs (tests/test_fidelity.py).
  `pivot_order="authors"` reproduces it: the pivots' positions, row + `image_start` (the image's
  first position in the authors' LLaVA-1.5 prompt, 35, their `--image_token_start_index`
  default; a knob, since the order follows the positions), go to the host once per selection
  (one round trip per sample and stage, never per pick; the default order makes none) and
  CPython's own set gives the order.
- Precision: the authors' key norms and cosines run in the model's float16, ours in float32 unless
  `authors_dtype` is set: then the L1 norms (`torch.norm(p=1)`) and `F.cosine_similarity` run in
  the model's dtype as in their code, and ties among float16 norms or cosines fall as `topk` breaks
  them (the authors' `topk` runs over their own list order, so a tie may fall differently there).

Fidelity: with `pivot_order="authors"`, `authors_dtype=True` and a keep of 4 + 8 t (their budget
of 8 t tokens), the kept set is the authors' `get_retained_image_token` up to ties.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from ...errors import VTAError
from ..plans import resolve_authors_dtype, rule_dtype, single_stage
from ..registry import Method, Need, register

LAYER = 2
IMAGE_PIVOTS = TEXT_PIVOTS = 4
IMAGE_START = 35  # the authors' --image_token_start_index (LLaVA-1.5's system prompt)


def authors_pivot_order(pivots: torch.Tensor, image_start: int = IMAGE_START) -> list[int]:
    """[P] host indices into `pivots` (rows: image rows, then n + text rows; image pivots first, each
    group by descending norm, as the authors list them) in the order the authors' loop visits them:
    `list(set(image_positions + text_positions))` in CPython, positions = row + `image_start`.
    One host round trip: the order is CPython's, computed on the host."""
    positions = [image_start + r for r in pivots.tolist()]  # ok-host: once per selection, pivot_order="authors" only
    where = {p: i for i, p in enumerate(positions)}
    return [where[p] for p in set(positions)]


def select(keys: torch.Tensor, hidden: torch.Tensor, n_image: int, keep: int, image_pivots: int = IMAGE_PIVOTS,
           text_pivots: int = TEXT_PIVOTS, pivot_order: str = "norm", image_start: int = IMAGE_START,
           dtype: torch.dtype | None = None) -> torch.Tensor:
    """keys [n + T, H d], hidden [n + T, D] (image rows first, then text) -> [keep] image indices.

    pivot_order: "norm" (ours: image pivots then text pivots, by descending key norm) or "authors"
    (CPython's set order of their positions, `authors_pivot_order`; one host round trip).
    dtype: None (float32) or the dtype the authors' norms and cosines run in (`authors_dtype`).
    Ops are constant in `keep` (one similarity per pivot, one top-k per pivot); with the default
    pivot order nothing is read back.
    """
    if pivot_order not in ("norm", "authors"):
        raise VTAError(f"dart: pivot_order={pivot_order!r}; use 'norm' (ours, by key norm) or 'authors' (the "
                       f"authors' Python-set order).")
    n, n_text = n_image, keys.shape[0] - n_image
    if dtype is None:
        norms = keys.float().abs().sum(-1)
    else:
        norms = torch.norm(keys.to(dtype), p=1, dim=-1)
    image_piv = torch.topk(norms[:n], min(image_pivots, keep, n)).indices
    text_piv = torch.topk(norms[n:], min(text_pivots, n_text)).indices + n
    pivots = torch.cat([image_piv, text_piv])
    rest, count = keep - len(image_piv), len(pivots)
    if count == 0:
        return image_piv
    if pivot_order == "authors":
        pivots = torch.cat([pivots[i:i + 1] for i in authors_pivot_order(pivots, image_start)])  # views: no copy
    per = [rest // count + (i < rest % count) for i in range(count)]  # host integers from the plan
    if dtype is None:
        h = F.normalize(hidden.float(), dim=-1)
        sim = h[pivots] @ h[:n].T  # [pivots, n]
    else:
        h = hidden.to(dtype)
    taken = torch.zeros(n, dtype=torch.bool, device=keys.device).index_fill(0, image_piv, True)
    picks = [image_piv]
    for i, t in enumerate(per):  # every pivot, even one taking 0: the same kernels at every keep
        row = sim[i] if dtype is None else F.cosine_similarity(h.index_select(0, pivots[i:i + 1]), h[:n], dim=-1)
        j = torch.topk(row.masked_fill(taken, float("inf")), t, largest=False).indices
        taken = taken.index_fill(0, j, True)
        picks.append(j)
    return torch.cat(picks)


def choose_dart(inputs, keep, stage, image_pivots=IMAGE_PIVOTS, text_pivots=TEXT_PIVOTS, pivot_order="norm",
                image_start=IMAGE_START, authors_dtype=False):
    return select(inputs.prev_keys, inputs.normed_hidden, len(inputs.columns), keep, image_pivots, text_pivots,
                  pivot_order, image_start, rule_dtype(authors_dtype))



register(Method(name="dart", summary="DART: per key-norm pivot (4 image + 4 text), the image tokens least similar to "
                "it, at layer K=2", where="llm", needs=(Need.PREV_KEYS, Need.NORMED_HIDDEN), choose=choose_dart,
                plan=single_stage(LAYER, rounding="round"),
                choose_knobs=("image_pivots", "text_pivots", "pivot_order", "image_start", "authors_dtype"),
                resolve_knobs=resolve_authors_dtype))
