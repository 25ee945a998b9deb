"""LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`): SigLIP patches (no [CLS]) with
anyres-max tiling.

Sequence order of one image's tokens (as the model's `pack_image_features` builds them), with
side = image_size / patch_size (27 at 384 px, patch 14: 729 tokens per crop):
- a sample with one image: the base grid (side x side, row-major), then the tile canvas cropped to
  the image's aspect ratio (as LLaVA-NeXT) and, when it holds more than 1.1^2 x max_n crops' worth
  of tokens (`vision_aspect_ratio` "anyres_max_<max_n>", 9 in the released models), resized
  bilinearly to (floor(h / r), floor(w / r)) with r = sqrt(h w / (max_n side^2)); row by row, each
  row followed by one newline token;
- a sample with several images: each image is its base grid followed by one newline token.
Column order in records is [base | tiles without newlines | newlines], as for LLaVA-NeXT.
Videos (pooled frames) are not handled: `vlm.prepare` takes images. [CLS]-saliency methods rank by the
attention each patch receives instead (`received_saliency`).
"""
from __future__ import annotations

import math

from ..errors import UnsupportedModelError
from .adapter import per_sample
from .layout import Grid
from .llava_next import LlavaNextAdapter


class LlavaOnevisionAdapter(LlavaNextAdapter):
    family = "llava-onevision"
    model_types = ("llava_onevision",)
    model_class = "LlavaOnevisionForConditionalGeneration"
    has_cls = False  # SigLIP: every vision token is a patch
    received_saliency = True  # [CLS]-saliency methods rank by the attention each patch receives

    def manual_prompt(self, processor, question, n_images):
        return ("<|im_start|>user\n" + "<image>\n" * n_images + question + "<|im_end|>\n"
                "<|im_start|>assistant\n")

    def processor_images(self, images):
        return images  # per sample: the processor's `batch_num_images` tells one-image samples apart

    def check_strategy(self, config) -> None:
        if config.vision_feature_select_strategy != "full":
            raise UnsupportedModelError(
                "vision_feature_select_strategy='default' drops the first SigLIP patch (there is no [CLS] to "
                f"drop), so the base grid is no longer square; vtanalysis supports 'full', as {self.family} uses.")

    def max_crops(self, config) -> int:
        """max_n of `vision_aspect_ratio` "anyres_max_<max_n>"."""
        return int(config.vision_aspect_ratio.removeprefix("anyres_max_"))

    def tile_grid_shape(self, config, image_size) -> tuple[int, int]:
        """(rows, cols) of the unpadded tile canvas after the max-crop resize (see the module doc)."""
        h, w = super().tile_grid_shape(config, image_size)
        side = self.base_side(config)
        ratio = math.sqrt(h * w / (self.max_crops(config) * side ** 2))
        if ratio > 1.1:
            return int(h // ratio), int(w // ratio)
        return h, w

    def image_specs(self, model_inputs, config, images_per_sample, originals):
        self.check_strategy(config)
        sizes = per_sample(model_inputs["image_sizes"].tolist(), model_inputs["batch_num_images"].tolist())
        # the model tiles only the image of a one-image sample (its `batch_num_images` rule)
        return [[self.tile_grid_shape(config, size) if len(group) == 1 else None for size in group] for group in sizes]

    def image_tokens(self, tile_shape, config):
        if tile_shape is None:  # base grid + one newline
            return self.base_side(config) ** 2 + 1
        return super().image_tokens(tile_shape, config)

    def arrange(self, run, tile_shape, config, image, col):
        if tile_shape is not None:
            return super().arrange(run, tile_shape, config, image, col)
        side = self.base_side(config)
        return run, [Grid(image, "base", (side, side), col, col + side * side)], [col + side * side]

    def tiled_images(self, batch):
        """Only the image of a one-image sample is tiled (the model's `batch_num_images` rule)."""
        return [n == 1 for n in batch.images_per_sample for _ in range(n)]

    def pack_image_features(self, vlm, features, sizes, newline):
        """OneVision's packing: the anyres-max resize (bilinear on the values too), base + newline for
        images of multi-image samples."""
        return vlm.model.model.pack_image_features(features, sizes, image_newline=newline,
                                                   vision_aspect_ratio=vlm.config.vision_aspect_ratio)[0]
