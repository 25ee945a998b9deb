"""LLaVA-NeXT (`LlavaNextForConditionalGeneration`): anyres = base image + unpadded tiles + newlines.

Sequence order of one image's tokens (as the model's `pack_image_features` builds them):
the base grid (side x side, row-major), then the tile canvas cropped to the image's aspect
ratio, row by row, each row followed by one newline token. Column order in records is
[base grid | tile grid without newlines | newline tokens], so each grid is a contiguous run.
"""
from __future__ import annotations

import torch
from transformers.models.llava_next.modeling_llava_next import (get_anyres_image_grid_shape, image_size_to_num_patches,
                                                                unpad_image)

from .adapter import per_sample
from .layout import Grid
from .llava import LlavaAdapter


class LlavaNextAdapter(LlavaAdapter):
    family = "llava-next"
    model_types = ("llava_next",)
    model_class = "LlavaNextForConditionalGeneration"
    has_cls = True
    resizable = True  # anyres: fewer tiles for a smaller image

    def manual_prompt(self, processor, question, n_images):
        return "[INST] " + "<image>\n" * n_images + question + " [/INST]"

    def tile_grid_shape(self, config, image_size) -> tuple[int, int]:
        """Unpadded (rows, cols) of the tile canvas for an original (height, width), via the model's own code."""
        side = self.base_side(config)
        n_rows, n_cols = get_anyres_image_grid_shape(
            image_size, config.image_grid_pinpoints, config.vision_config.image_size
        )
        canvas = torch.empty(1, n_rows * side, n_cols * side)
        unpadded = unpad_image(canvas, torch.as_tensor(image_size))
        return int(unpadded.shape[1]), int(unpadded.shape[2])

    def image_specs(self, model_inputs, config, images_per_sample, originals):
        self.check_strategy(config)
        shapes = [self.tile_grid_shape(config, size) for size in model_inputs["image_sizes"].tolist()]
        return per_sample(shapes, images_per_sample)

    def image_tokens(self, tile_shape, config):
        h, w = tile_shape
        return self.base_side(config) ** 2 + h * (w + 1)

    def arrange(self, run, tile_shape, config, image, col):
        side2 = self.base_side(config) ** 2
        (h, w), side = tile_shape, self.base_side(config)
        rows = run[side2:].view(h, w + 1)  # each tile row ends with a newline token
        order = torch.cat([run[:side2], rows[:, :w].flatten(), rows[:, w]])
        grids = [Grid(image, "base", (side, side), col, col + side2),
                 Grid(image, "tiles", (h, w), col + side2, col + side2 + h * w)]
        return order, grids, list(range(col + side2 + h * w, col + run.numel()))

    def pack_vision(self, vlm, batch, per_input):
        """Each image's crops (base first) through the model's own `pack_image_features`: tiles, unpadding
        and newline tokens exactly as the model arranges them."""
        sizes = batch.model_inputs["image_sizes"]
        # vlm.prepare records the sizes on the host; only hand-built VLMInputs read them back
        host_sizes = batch.image_sizes if batch.image_sizes is not None else sizes.tolist()  # ok-host: fallback
        crops = [image_size_to_num_patches(s, vlm.config.image_grid_pinpoints, vlm.config.vision_config.image_size)
                 if tiled else 1 for s, tiled in zip(host_sizes, self.tiled_images(batch))]
        nan = torch.full((per_input.shape[-1],), float("nan"), device=per_input.device)
        return self.pack_image_features(vlm, list(per_input.split(crops)), sizes, nan)

    def vision_crops(self, vlm, batch) -> int:
        """Each tiled image's base image and tiles (`image_size_to_num_patches`), one input per other image."""
        sizes = batch.image_sizes if batch.image_sizes is not None else batch.model_inputs["image_sizes"].tolist()  # ok-host: before the run
        return sum(image_size_to_num_patches(s, vlm.config.image_grid_pinpoints, vlm.config.vision_config.image_size)
                   if tiled else 1 for s, tiled in zip(sizes, self.tiled_images(batch)))

    def tiled_images(self, batch) -> list[bool]:
        """Per image of the batch: whether the model tiles it (every image, in LLaVA-NeXT)."""
        return [True] * sum(batch.images_per_sample or [1] * len(batch))

    def pack_image_features(self, vlm, features, sizes, newline):
        return vlm.model.model.pack_image_features(features, sizes, "default", image_newline=newline)[0]
