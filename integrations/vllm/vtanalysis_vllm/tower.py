"""The vision tower's pass, with what the methods read beside the features: at the feature layer
(the last layer vLLM builds: it builds the tower up to the layer that feeds the projector), the
[CLS] query's attention to each patch and the patches' keys, recomputed from that layer's own
queries and keys by a hook on its attention (one query row; no attention map is kept)."""
from __future__ import annotations

import torch

from .select import cls_attention
from .settings import SettingsError

NEEDS_CLS = {"fastervlm", "visionzip"}


def run_tower(vision_tower, pixels: torch.Tensor, method: str) -> dict:
    """pixels [V, 3, H, W] -> {"features": [V, P, Dv] (patches), "cls": [V, Dv], and for the methods
    that read them "saliency": [V, P], "keys": [V, P, d]}."""
    captured = {}
    hook = None
    if method in NEEDS_CLS:
        attn = vision_tower.vision_model.encoder.layers[-1].self_attn

        def capture(module, args, output):
            captured["saliency"], captured["keys"] = cls_attention(args[0], args[1], attn.num_heads_per_partition,
                                                                   attn.scale)
        hook = attn.attn.register_forward_hook(capture)
    try:
        full = vision_tower(pixels, feature_select_strategy="full")  # [V, 1 + P, Dv]: [CLS] first
    finally:
        if hook is not None:
            hook.remove()
    return {"features": full[:, 1:], "cls": full[:, 0], **captured}


def check_config(config) -> None:
    """The LLaVA configs the plugin serves: the 'default' feature strategy (drop [CLS]), one feature layer."""
    if config.vision_feature_select_strategy != "default" or not isinstance(config.vision_feature_layer, int):
        raise SettingsError(
            "vtanalysis-vllm: LLaVA configs with vision_feature_select_strategy='default' and one feature layer are "
            f"served; this one has {config.vision_feature_select_strategy!r} and {config.vision_feature_layer!r}.")
