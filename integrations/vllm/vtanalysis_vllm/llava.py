"""LLaVA-1.5 served pruned: vLLM's `LlavaForConditionalGeneration` with fewer image placeholders
and only the kept projector rows.

- The placeholder count is decided in `PrunedLlavaProcessingInfo.get_num_image_tokens`, where vLLM
  decides it (the prompt, the scheduler's token budget and the encoder cache all follow);
- `_process_image_input` (`pruned.PrunedImages`) runs the vision tower (`tower.run_tower`), the
  projector, and returns per image the rows `select.kept_embeddings` keeps, in the order the LLM
  sees them.
"""
from __future__ import annotations

from vllm.model_executor.models.llava import (LlavaDummyInputsBuilder, LlavaForConditionalGeneration,
                                              LlavaImageEmbeddingInputs, LlavaMultiModalProcessor,
                                              LlavaProcessingInfo)
from vllm.multimodal import MULTIMODAL_REGISTRY

from . import settings as settings_module
from .packing import Packing
from .pruned import PrunedImages
from .select import kept_count
from .tower import run_tower

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
class PrunedLlavaForConditionalGeneration(PrunedImages, LlavaForConditionalGeneration):
    ARCHITECTURE, MODEL_TYPES, EMBEDDING_INPUTS = ARCHITECTURE, MODEL_TYPES, LlavaImageEmbeddingInputs

    def _images(self, image_input):
        tower = run_tower(self.vision_tower, image_input["pixel_values"], self.vta.method)
        embeds = self.multi_modal_projector(tower["features"])  # [B, P, D]
        packing = Packing.single(side_of(self.config))
        for b in range(embeds.shape[0]):
            yield packing, embeds[b], {name: value[b:b + 1] for name, value in tower.items()}
