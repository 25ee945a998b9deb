"""LLaVA-1.5 (`LlavaForConditionalGeneration`): one fixed-size image, one square patch grid."""
from __future__ import annotations

import torch

from ..errors import UnsupportedModelError
from .adapter import Adapter, split_images
from .layout import Grid, TokenLayout, text_after_images


class LlavaAdapter(Adapter):
    family = "llava-1.5"
    model_types = ("llava",)
    model_class = "LlavaForConditionalGeneration"
    has_cls = True

    def manual_prompt(self, processor, question, n_images):
        return "USER: " + "<image>\n" * n_images + question + " ASSISTANT:"

    def grid_shape(self, config) -> tuple[int, int]:
        side = config.vision_config.image_size // config.vision_config.patch_size
        return side, side

    def layouts(self, model_inputs, config, images_per_sample):
        h, w = self.grid_shape(config)
        per_image = h * w
        if config.vision_feature_select_strategy != "default":
            raise UnsupportedModelError(
                "vision_feature_select_strategy='full' keeps the vision [CLS] token among the image tokens; "
                "vtanalysis supports 'default' (patch tokens only), as LLaVA-1.5 uses."
            )
        out = []
        ids, mask = model_inputs["input_ids"], model_inputs["attention_mask"]
        for b, n_img in enumerate(images_per_sample):
            first, image_pos, text_pos = text_after_images(ids[b], mask[b], self.image_token_id(config))
            runs = split_images(image_pos, [per_image] * n_img)
            grids = [Grid(i, "image", (h, w), i * per_image, (i + 1) * per_image) for i in range(n_img)]
            out.append(
                TokenLayout(
                    seq_len=ids.shape[1],
                    first_position=first,
                    image_positions=torch.cat(runs),
                    text_positions=text_pos,
                    grids=grids,
                    image_columns=[(g.start, g.stop) for g in grids],
                )
            )
        return out
