"""VisPruner (Zhang et al. 2025, "Beyond text-visual attention: exploiting visual cues for effective
token pruning in VLMs"; authors' code Theia-4869/VisPruner): the tokens of highest [CLS]
attention, then diverse ones from the rest by rounds of duplicate removal, per crop.

    f: [n, Dv], s: [n] -> [k] indices; ceil((n - k_imp - k_div) / 8) rounds of 11 dispatched ops;
        k_imp = floor(k x important_ratio) tokens of highest s, then rounds that split the rest
        alternately (a: 0th, 2nd, ... b: 1st, 3rd, ... of the current order) and drop the (at most
        8) a-tokens most cosine-similar to some b-token, until k - k_imp remain
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from ..plans import among_patches, pre_stage
from ..registry import Method, Need, register


def vispruner(features: torch.Tensor, saliency: torch.Tensor, k: int, important_ratio: float = 0.5,
              per_round: int = 8) -> torch.Tensor:
    """VisPruner (Theia-4869/VisPruner, `llava/model/llava_arch.py`, `encode_images`): the
    floor(k x important_ratio) tokens of highest [CLS] attention, then diverse tokens from the rest
    (kept in descending-attention order): each round splits them alternately into a and b and drops
    the min(8, excess) a-tokens with the highest max-cosine to b (features: the feature-layer patch
    states); the survivors' order is a (by that score, descending) then b. The authors' code stops
    with an error when the rest is odd or fewer than 8 diverse tokens are asked for; here a round
    drops at most half the a-tokens instead. Ties keep the earlier token (stable sorts)."""
    n = features.shape[0]
    k = min(k, n)
    n_imp = int(k * important_ratio)
    n_div = k - n_imp
    order = torch.argsort(saliency.float(), descending=True, stable=True)
    important, rest = order[:n_imp], order[n_imp:]
    if n_div == 0:
        return important
    x = F.normalize(features.float(), dim=-1)
    size = n - n_imp  # host integer: the rest's length, known from k alone
    while size > n_div:
        a, b = rest[0::2], rest[1::2]
        drop = min(per_round, size - n_div, (size + 1) // 2)
        score = (x[a] @ x[b].T).amax(-1)
        rest = torch.cat([a[torch.argsort(score, descending=True, stable=True)[drop:]], b])
        size -= drop
    return torch.cat([important, rest])



def pick_vispruner(inputs, patches, k, important_ratio=0.5):
    return vispruner(inputs.vision_features[patches], inputs.saliency[patches], k, important_ratio)



register(Method(name="vispruner", summary="VisPruner: top [CLS]-attention tokens + diverse ones left by rounds of "
                "duplicate removal, per crop", where="pre", needs=(Need.CLS, Need.VISION_FEATURES),
                choose=among_patches(pick_vispruner), plan=pre_stage(), positions="renumber",
                choose_knobs=("important_ratio",)))
