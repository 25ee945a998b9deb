"""LLaVA-NeXT served pruned: vLLM's `LlavaNextForConditionalGeneration` with fewer image
placeholders and only the kept rows.

An image is its base crop plus tiles, unpadded and closed by a newline token per row. As in
`vtanalysis.prune`, each crop keeps the method's count of the tower's patches (at most what
unpadding left it) and the newline tokens stay. Where each row of the packed image comes from is
read off vLLM's own packing function, run on index codes (`packing_of`), for the placeholder count
and for the selection alike.
"""
from __future__ import annotations

import torch
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape
from vllm.model_executor.models.llava import LlavaDummyInputsBuilder
from vllm.model_executor.models.llava_next import (LlavaNextForConditionalGeneration, LlavaNextImageEmbeddingInputs,
                                                   LlavaNextMultiModalProcessor, LlavaNextProcessingInfo)
from vllm.multimodal import MULTIMODAL_REGISTRY

from . import settings as settings_module
from .llava import side_of
from .packing import Packing
from .pruned import PrunedImages
from .select import kept_count
from .tower import run_tower

ARCHITECTURE = "VtanalysisLlavaNext"
MODEL_TYPES = ("llava_next",)


class _Codes:
    """What vLLM's packing function reads of the model, with -1 for the newline embedding."""

    def __init__(self, config):
        self.config = config
        self.image_newline = torch.full((1,), -1.0)


def packing_of(config, height: int, width: int) -> Packing:
    """The packing of an image of height x width pixels: vLLM's `_merge_image_patch_embeddings` on
    codes crop * P + patch in place of the features (P = patches per crop)."""
    side = side_of(config)
    tiles_h, tiles_w = get_anyres_image_grid_shape((height, width), config.image_grid_pinpoints,
                                                   config.vision_config.image_size)
    n_patches = side * side
    codes = torch.arange((tiles_h * tiles_w + 1) * n_patches, dtype=torch.float32).view(-1, n_patches, 1)
    packed = LlavaNextForConditionalGeneration._merge_image_patch_embeddings(
        _Codes(config), torch.tensor([height, width]), codes, strategy="spatial_unpad")
    return Packing(packed[:, 0].long(), n_patches, side)


class PrunedLlavaNextProcessingInfo(LlavaNextProcessingInfo):
    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        config = self.get_hf_config()
        settings = settings_module.read(config, ARCHITECTURE, MODEL_TYPES)
        return kept_count(settings, packing_of(config, image_height, image_width))


@MULTIMODAL_REGISTRY.register_processor(LlavaNextMultiModalProcessor, info=PrunedLlavaNextProcessingInfo,
                                        dummy_inputs=LlavaDummyInputsBuilder)
class PrunedLlavaNextForConditionalGeneration(PrunedImages, LlavaNextForConditionalGeneration):
    ARCHITECTURE, MODEL_TYPES, EMBEDDING_INPUTS = ARCHITECTURE, MODEL_TYPES, LlavaNextImageEmbeddingInputs

    def _images(self, image_input):
        pixels = image_input["pixel_values"]
        per_image = list(pixels) if isinstance(pixels, torch.Tensor) else pixels  # [crops_i, 3, H, W] each
        tower = run_tower(self.vision_tower, torch.cat(per_image), self.vta.method)
        embeds = self.multi_modal_projector(tower["features"])  # [V, P, D]
        sizes = image_input["image_sizes"]  # [images, 2] (height, width), kept on the CPU by vLLM
        start = 0
        for i, crops in enumerate(per_image):
            span = slice(start, start + crops.shape[0])
            start = span.stop
            packed = self._merge_image_patch_embeddings(sizes[i], embeds[span], strategy="spatial_unpad")
            height, width = sizes[i].tolist()  # ok-host: a CPU tensor
            yield packing_of(self.config, height, width), packed, {k: v[span] for k, v in tower.items()}
