"""LLaVA-1.5 served pruned: vLLM's `LlavaForConditionalGeneration` with fewer image placeholders
and only the kept projector rows.

- The placeholder count is decided in `PrunedLlavaProcessingInfo.get_num_image_tokens`, where vLLM
  decides it (the prompt, the scheduler's token budget and the encoder cache all follow);
- `_process_image_input` runs the vision tower (its feature layer also yields the [CLS] attention
  and keys when the method reads them), the projector, and returns per image the k rows
  `select.kept_embeddings` keeps, in the order the LLM sees them; `last_kept` holds, per image of
  the last encoder batch, the patch indices they stand for (`vtanalysis_vllm.last_kept(llm)`).
"""
from __future__ import annotations

import torch
from vllm.model_executor.models.llava import (LlavaDummyInputsBuilder, LlavaForConditionalGeneration,
                                              LlavaImageEmbeddingInputs, LlavaMultiModalProcessor,
                                              LlavaProcessingInfo)
from vllm.multimodal import MULTIMODAL_REGISTRY

from . import settings as settings_module
from .select import cls_attention, kept_embeddings

ARCHITECTURE = "VtanalysisLlava"
MODEL_TYPES = ("llava",)
NEEDS_CLS = {"fastervlm", "visionzip"}


def grid_of(hf_config) -> tuple[int, int]:
    """The patch grid (h, w) of one image, from the vision config."""
    side = hf_config.vision_config.image_size // hf_config.vision_config.patch_size
    return side, side


class PrunedLlavaProcessingInfo(LlavaProcessingInfo):
    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        full = super().get_num_image_tokens(image_width=image_width, image_height=image_height)
        return settings_module.read(self.get_hf_config(), ARCHITECTURE, MODEL_TYPES).count(full)


@MULTIMODAL_REGISTRY.register_processor(LlavaMultiModalProcessor, info=PrunedLlavaProcessingInfo,
                                        dummy_inputs=LlavaDummyInputsBuilder)
class PrunedLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        config = vllm_config.model_config.hf_config
        self.vta = settings_module.read(config, ARCHITECTURE, MODEL_TYPES)  # fails before any weight is made
        if config.vision_feature_select_strategy != "default" or not isinstance(config.vision_feature_layer, int):
            raise settings_module.SettingsError(
                "vtanalysis-vllm: LLaVA with vision_feature_select_strategy='default' and one feature layer is "
                f"served; this config has {config.vision_feature_select_strategy!r} and "
                f"{config.vision_feature_layer!r}.")
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.last_kept: list[torch.Tensor] = []

    def _process_image_input(self, image_input):
        if isinstance(image_input, LlavaImageEmbeddingInputs):
            raise ValueError("vtanalysis-vllm: image embeddings passed in are served as given, unpruned; "
                             "pass images to prune them.")
        pixels = image_input["pixel_values"]
        method = self.vta.method
        captured = {}
        hook = None
        if method in NEEDS_CLS:
            # the tower is built up to its feature layer: the last layer is the one whose output feeds the projector
            attn = self.vision_tower.vision_model.encoder.layers[-1].self_attn

            def capture(module, args, output):
                captured["saliency"], captured["keys"] = cls_attention(args[0], args[1], attn.num_heads_per_partition,
                                                                       attn.scale)
            hook = attn.attn.register_forward_hook(capture)
        try:
            features = self.vision_tower(pixels, feature_select_strategy="full")  # [B, 1 + n, Dv]: [CLS] first
        finally:
            if hook is not None:
                hook.remove()
        grid = grid_of(self.config)
        n = features.shape[1] - 1
        k = self.vta.count(n)
        out, self.last_kept = [], []
        for b in range(features.shape[0]):
            embeds, kept = kept_embeddings(method, k, self.multi_modal_projector, features[b, 1:], grid,
                                           cls=features[b, 0], saliency=captured["saliency"][b] if captured else None,
                                           keys=captured["keys"][b] if captured else None)
            out.append(embeds)
            self.last_kept.append(kept)
        return tuple(out)
