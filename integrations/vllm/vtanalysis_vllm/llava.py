"""LLaVA-1.5 served pruned: vLLM's `LlavaForConditionalGeneration` with fewer image placeholders
and only the kept projector rows.

- The placeholder count is decided in `PrunedLlavaProcessingInfo.get_num_image_tokens`, where vLLM
  decides it (the prompt, the scheduler's token budget and the encoder cache all follow);
- `_process_image_input` runs the vision tower (`tower.run_tower`), the projector, and returns per
  image the rows `select.kept_embeddings` keeps, in the order the LLM sees them; `last_kept` holds,
  per image of the last encoder batch, the rows they stand for (`vtanalysis_vllm.last_kept(llm)`).
"""
from __future__ import annotations

import torch
from vllm.model_executor.models.llava import (LlavaDummyInputsBuilder, LlavaForConditionalGeneration,
                                              LlavaImageEmbeddingInputs, LlavaMultiModalProcessor,
                                              LlavaProcessingInfo)
from vllm.multimodal import MULTIMODAL_REGISTRY

from . import settings as settings_module
from .packing import Packing
from .select import kept_count, kept_embeddings
from .tower import check_config, run_tower

ARCHITECTURE = "VtanalysisLlava"
MODEL_TYPES = ("llava",)


def side_of(hf_config) -> int:
    """Patches per side of one crop, from the vision config."""
    return hf_config.vision_config.image_size // hf_config.vision_config.patch_size


class PrunedLlavaProcessingInfo(LlavaProcessingInfo):
    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        config = self.get_hf_config()
        return kept_count(settings_module.read(config, ARCHITECTURE, MODEL_TYPES), Packing.single(side_of(config)))


@MULTIMODAL_REGISTRY.register_processor(LlavaMultiModalProcessor, info=PrunedLlavaProcessingInfo,
                                        dummy_inputs=LlavaDummyInputsBuilder)
class PrunedLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        config = vllm_config.model_config.hf_config
        self.vta = settings_module.read(config, ARCHITECTURE, MODEL_TYPES)  # fails before any weight is made
        check_config(config)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.last_kept: list[torch.Tensor] = []

    def _process_image_input(self, image_input):
        if isinstance(image_input, LlavaImageEmbeddingInputs):
            raise ValueError("vtanalysis-vllm: image embeddings passed in are served as given, unpruned; "
                             "pass images to prune them.")
        tower = run_tower(self.vision_tower, image_input["pixel_values"], self.vta.method)
        embeds = self.multi_modal_projector(tower["features"])  # [B, P, D]
        packing = Packing.single(side_of(self.config))
        out, self.last_kept = [], []
        for b in range(embeds.shape[0]):
            one = {name: value[b:b + 1] for name, value in tower.items()}
            rows, kept = kept_embeddings(self.vta, packing, embeds[b], self.multi_modal_projector, **one)
            out.append(rows)
            self.last_kept.append(kept)
        return tuple(out)
