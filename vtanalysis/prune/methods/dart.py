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
- Pivots are visited image pivots first, then text pivots, each by descending key norm; the
  authors' order is that of a Python `set` of their positions (arbitrary), and reading it would
  cost a host round trip.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from ..plans import single_stage
from ..registry import Method, Need, register

LAYER = 2
IMAGE_PIVOTS = TEXT_PIVOTS = 4


def select(keys: torch.Tensor, hidden: torch.Tensor, n_image: int, keep: int, image_pivots: int = IMAGE_PIVOTS,
           text_pivots: int = TEXT_PIVOTS) -> torch.Tensor:
    """keys [n + T, H d], hidden [n + T, D] (image rows first, then text) -> [keep] image indices.

    Ops are constant in `keep` (one similarity matrix, one top-k per pivot); nothing is read back.
    """
    n, n_text = n_image, keys.shape[0] - n_image
    norms = keys.float().abs().sum(-1)
    image_piv = torch.topk(norms[:n], min(image_pivots, keep, n)).indices
    text_piv = torch.topk(norms[n:], min(text_pivots, n_text)).indices + n
    pivots = torch.cat([image_piv, text_piv])
    rest, count = keep - len(image_piv), len(pivots)
    if count == 0:
        return image_piv
    per = [rest // count + (i < rest % count) for i in range(count)]  # host integers from the plan
    h = F.normalize(hidden.float(), dim=-1)
    sim = h[pivots] @ h[:n].T  # [pivots, n]
    taken = torch.zeros(n, dtype=torch.bool, device=keys.device).index_fill(0, image_piv, True)
    picks = [image_piv]
    for i, t in enumerate(per):  # every pivot, even one taking 0: the same kernels at every keep
        j = torch.topk(sim[i].masked_fill(taken, float("inf")), t, largest=False).indices
        taken = taken.index_fill(0, j, True)
        picks.append(j)
    return torch.cat(picks)


def choose_dart(inputs, keep, stage, image_pivots=IMAGE_PIVOTS, text_pivots=TEXT_PIVOTS):
    return select(inputs.prev_keys, inputs.normed_hidden, len(inputs.columns), keep, image_pivots, text_pivots)



register(Method(name="dart", summary="DART: per key-norm pivot (4 image + 4 text), the image tokens least similar to "
                "it, at layer K=2", where="llm", needs=(Need.PREV_KEYS, Need.NORMED_HIDDEN), choose=choose_dart,
                plan=single_stage(LAYER, rounding="round"), choose_knobs=("image_pivots", "text_pivots")))
