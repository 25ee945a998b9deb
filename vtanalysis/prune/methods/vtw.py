"""VTW (Lin et al. 2024, "Boosting multimodal large language models with visual tokens
withdrawal"): every image token leaves the sequence at layer k, where the paper finds the
information has migrated to the text tokens (k = 15 of 32 for LLaVA-1.5-7B).
"""
from __future__ import annotations
from ..plans import budget_tokens, choose_first
from ..registry import Method, register


def vtw_plan(vlm, n_image, keep, layer=None, **_):
    """VTW: withdraw every image token at layer k: `layer`, or round(keep * depth) for a budget of
    keep (the average image tokens per layer is then ~keep of them; 15 of 32 in the paper)."""
    if layer is None:
        share = budget_tokens(keep, n_image) / n_image
        layer = min(max(1, round(share * vlm.num_layers)), vlm.num_layers - 1)
    return [(layer, 0)]



register(Method(name="vtw", summary="VTW: withdraw all image tokens at layer k", where="llm", needs=(),
                choose=choose_first, plan=vtw_plan))
