"""VisPruner (Zhang et al. 2025, "Beyond text-visual attention: exploiting visual cues for effective
token pruning in VLMs"; authors' code Theia-4869/VisPruner): the tokens of highest [CLS]
attention, then diverse ones from the rest by rounds of duplicate removal, per crop.

    f: [n, Dv], s: [n] -> [k] indices; ceil((n - k_imp - k_div) / 8) rounds of 11 dispatched ops;
        k_imp = floor(k x important_ratio) tokens of highest s, then rounds that split the rest
        alternately (a: 0th, 2nd, ... b: 1st, 3rd, ... of the current order) and drop the (at most
        8) a-tokens most cosine-similar to some b-token, until k - k_imp remain

Fidelity (against `llava/model/llava_arch.py`, `LlavaMetaForCausalLM.encode_images`): the same
kept set on every budget their code runs, with these differences, each on purpose:
- Ties. Their `argsort` (of the [CLS] attention, and of each round's a-scores) is not stable, so
  tied scores - common in float16, and near cosine 1 in float32 - come out in an order the kernel
  picks, and every later alternating split inherits it. Ours sorts stably: among tied tokens the
  earlier one (in the current order) ranks first, the same on every device and run.
- Budgets. Their rounds raise (a shape mismatch in the index `expand`) whenever a round runs on an
  odd rest R, or drops more a-tokens than there are b-tokens (R // 2 < min(8, R - k_div)): at 576
  tokens and ratio 0.5, every k < 12 and every k with an odd k // 2. Ours runs those rounds with
  the odd a-token in a and drops at most every a-token (min(8, excess, ceil(R / 2))), so it
  accepts every budget: any k >= 0 (k > n keeps all n) with any important_ratio in [0, 1], and
  returns exactly min(k, n) distinct tokens. It refuses (`VTAError`) only an important_ratio
  outside [0, 1], a share with which the budget split has no meaning (floor(k x ratio) important
  tokens would be more than k, or negative).
- Precision. Theirs runs in the model's float16; ours in float32 unless `authors_dtype` is set
  (the ranking, the normalised features and the a-b cosines rounded to the model's dtype).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from ...errors import VTAError
from ..plans import among_patches, pre_stage, resolve_authors_dtype, rule_dtype
from ..registry import Method, Need, register


def vispruner(features: torch.Tensor, saliency: torch.Tensor, k: int, important_ratio: float = 0.5,
              per_round: int = 8, dtype: torch.dtype | None = None) -> torch.Tensor:
    """VisPruner (Theia-4869/VisPruner, `llava/model/llava_arch.py`, `encode_images`): the
    floor(k x important_ratio) tokens of highest [CLS] attention, then diverse tokens from the rest
    (kept in descending-attention order): each round splits them alternately into a and b and drops
    the min(8, excess, |a|) a-tokens with the highest max-cosine to b (features: the feature-layer
    patch states); the survivors' order is a (by that score, descending) then b. Ties keep the
    earlier token (stable sorts). Any k >= 0 works (see the module docstring for the budgets the
    authors' code refuses); an important_ratio outside [0, 1] is a `VTAError`.

    dtype None: float32. A dtype (the `authors_dtype` knob): the attention ranking, f / ||f|| and
    the a-b cosines rounded to it, as the authors' float16 LLaVA computes them."""
    if not 0.0 <= important_ratio <= 1.0:
        raise VTAError(f"vispruner: important_ratio={important_ratio!r} is outside [0, 1]; it is the share of the "
                       f"budget taken by [CLS] attention (the authors' default 0.5; 0.75 in their 64-token example).")
    n = features.shape[0]
    k = max(0, min(k, n))
    n_imp = int(k * important_ratio)
    n_div = k - n_imp
    work = torch.float32 if dtype is None else dtype
    order = torch.argsort(saliency.to(work), descending=True, stable=True)
    important, rest = order[:n_imp], order[n_imp:]
    if n_div == 0:
        return important
    if dtype is None:
        x = F.normalize(features.float(), dim=-1)
    else:
        x = features.to(dtype)
        x = x / x.norm(dim=-1, keepdim=True)
    size = n - n_imp  # host integer: the rest's length, known from k alone
    while size > n_div:
        a, b = rest[0::2], rest[1::2]
        drop = min(per_round, size - n_div, (size + 1) // 2)
        score = (x[a] @ x[b].T).amax(-1)
        rest = torch.cat([a[torch.argsort(score, descending=True, stable=True)[drop:]], b])
        size -= drop
    return torch.cat([important, rest])



def pick_vispruner(inputs, patches, k, important_ratio=0.5, authors_dtype=False):
    return vispruner(inputs.vision_features[patches], inputs.saliency[patches], k, important_ratio,
                     dtype=rule_dtype(authors_dtype))



register(Method(name="vispruner", summary="VisPruner: top [CLS]-attention tokens + diverse ones left by rounds of "
                "duplicate removal, per crop", where="pre", needs=(Need.CLS, Need.VISION_FEATURES),
                choose=among_patches(pick_vispruner), plan=pre_stage(), positions="renumber",
                choose_knobs=("important_ratio", "authors_dtype"), resolve_knobs=resolve_authors_dtype))
