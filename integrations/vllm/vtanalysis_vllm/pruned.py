"""What the pruned model classes share: the settings read (and the config checked) before any weight
is made, image embeddings passed in refused, and per image the rows kept, with `last_kept`
recording the rows they stand for (`vtanalysis_vllm.last_kept(llm)`)."""
from __future__ import annotations

import torch

from . import settings as settings_module
from .select import kept_embeddings
from .tower import check_config


class PrunedImages:
    """A mixin before a vLLM LLaVA-family class. Subclasses name `ARCHITECTURE`, `MODEL_TYPES`,
    `EMBEDDING_INPUTS` (the family's input type for precomputed embeddings) and implement
    `_images(image_input)` -> per image (Packing, packed embeddings [N, D], tower outputs of its crops)."""

    ARCHITECTURE: str
    MODEL_TYPES: tuple[str, ...]
    EMBEDDING_INPUTS: type

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        config = vllm_config.model_config.hf_config
        self.vta = settings_module.read(config, self.ARCHITECTURE, self.MODEL_TYPES)  # fails before any weight is made
        check_config(config)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.last_kept: list[torch.Tensor] = []

    def _process_image_input(self, image_input):
        if isinstance(image_input, self.EMBEDDING_INPUTS):
            raise ValueError("vtanalysis-vllm: image embeddings passed in are served as given, unpruned; "
                             "pass images to prune them.")
        out, self.last_kept = [], []
        for packing, embeds, tower in self._images(image_input):
            rows, kept = kept_embeddings(self.vta, packing, embeds, self.multi_modal_projector, **tower)
            out.append(rows)
            self.last_kept.append(kept)
        return out
