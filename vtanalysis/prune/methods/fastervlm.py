"""FasterVLM (Zhang et al. 2024, "[CLS] attention is all you need for training-free visual token
pruning"): the vision tower's [CLS] attention at the projector's feature layer (-2 on LLaVA),
head-mean, top-k of each crop's patches before the projector; LLaVA-NeXT newline tokens are kept.
On families without a [CLS] token the attention each patch receives stands in (`prune.vision`).
"""
from __future__ import annotations
from ...rules.topk import top_k
from ..plans import among_patches, pre_stage
from ..registry import Method, Need, register


def pick_saliency(inputs, patches, k):
    return top_k(inputs.saliency[patches], k)



register(Method(name="fastervlm", summary="FasterVLM: top-k vision [CLS] attention, before the LLM", where="pre",
                needs=(Need.CLS,), choose=among_patches(pick_saliency), plan=pre_stage(rounding="round"),
                positions="renumber"))
