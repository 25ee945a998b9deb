"""InternVL 3 / 3.5 (`InternVLForConditionalGeneration`, the `-hf` checkpoints): dynamic tiling
and pixel shuffle.

The processor (`GotOcr2ImageProcessor` with `crop_to_patches`) resizes an image onto a canvas of
cols x rows tiles of the tower's input size (448 px in the released models), the arrangement whose
aspect ratio is closest to the image's among those of min_patches..max_patches tiles (1..12
released), and adds a thumbnail of the whole image when there is more than one tile. Each tile
gives (size / patch)^2 patches (32 x 32 at 448 px, patch 14), which the model's pixel shuffle merges
2 x 2 (`downsample_ratio` 0.5) into side x side tokens, side = size / patch * downsample_ratio (16:
256 per tile). In the sequence, an image is `<img>`, its tiles one after the other (row-major over
the canvas, each tile's tokens row-major), the thumbnail, then `</img>`.

Column order in records: the tile canvas as one (rows * side) x (cols * side) grid, row-major
("tiles"), then the thumbnail ("thumbnail"); an image of one tile has no thumbnail and is one
grid ("image").
"""
from __future__ import annotations

import torch

from ..errors import PromptError, UnsupportedModelError
from .adapter import Adapter, image_runs, per_sample
from .layout import Grid


class InternVLAdapter(Adapter):
    family = "internvl"
    model_types = ("internvl",)
    model_class = "InternVLForConditionalGeneration"
    has_cls = False
    no_cls_reason = ("merges 2x2 vision patches into each LLM token (pixel shuffle), and vtanalysis does not "
                     "map InternViT's [CLS] attention onto merged tokens")

    def manual_prompt(self, processor, question, n_images):
        return ("<|im_start|>user\n" + f"{processor.image_token}\n" * n_images + question + "<|im_end|>\n"
                "<|im_start|>assistant\n")

    def check_strategy(self, config) -> None:
        if config.vision_feature_select_strategy != "default":
            raise UnsupportedModelError(
                "vision_feature_select_strategy='full' keeps InternViT's [CLS] token in the pixel shuffle, so the "
                f"patch grid is no longer square; vtanalysis supports 'default', as {self.family} uses.")

    def tile_size(self, config) -> int:
        size = config.vision_config.image_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    def side(self, config) -> int:
        """Tokens per tile row after the pixel shuffle."""
        patch = config.vision_config.patch_size
        patch = int(patch[0] if isinstance(patch, (list, tuple)) else patch)
        return int(self.tile_size(config) // patch * config.downsample_ratio)

    def image_specs(self, model_inputs, config, images_per_sample, originals):
        """(rows, cols, thumbnail) per image: the tile count is read from the processor's output (each
        image's run of image tokens), its arrangement from the original size as the processor chose it."""
        self.check_strategy(config)
        per_tile = self.side(config) ** 2
        specs = []
        for ids, n_images, sizes in zip(model_inputs["input_ids"], images_per_sample,
                                        per_sample(originals, images_per_sample)):
            runs = image_runs(ids, self.image_token_id(config))
            if len(runs) != n_images or any(n % per_tile for n in runs):
                raise PromptError(
                    f"the sequence holds image-token runs of {runs} tokens for {n_images} image(s) of "
                    f"{per_tile} tokens per tile; each image placeholder must be expanded by the model's own "
                    "processor (pass the raw prompt).")
            # imported here: its module needs torchvision, which a LLaVA-only environment may lack
            # (vLLM's CPU build, where the plugin's tests run)
            from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas
            sample = []
            for n, size in zip(runs, sizes):
                tiles = n // per_tile
                if tiles == 1:
                    sample.append((1, 1, False))
                    continue
                # the arrangement of exactly tiles - 1 tiles the processor's rule picks for this size
                cols, rows = get_optimal_tiled_canvas(tuple(size), (self.tile_size(config),) * 2, tiles - 1, tiles - 1)
                sample.append((rows, cols, True))
            specs.append(sample)
        return specs

    def image_tokens(self, spec, config):
        rows, cols, thumbnail = spec
        return self.side(config) ** 2 * (rows * cols + thumbnail)

    def arrange(self, run, spec, config, image, col):
        rows, cols, thumbnail = spec
        side = self.side(config)
        if not thumbnail:
            return run, [Grid(image, "image", (side, side), col, col + side * side)], []
        n = rows * cols * side * side
        # sequence: tile-major [rows, cols, side, side]; columns: canvas row-major [rows, side, cols, side]
        canvas = run[:n].view(rows, cols, side, side).permute(0, 2, 1, 3).flatten()
        grids = [Grid(image, "tiles", (rows * side, cols * side), col, col + n),
                 Grid(image, "thumbnail", (side, side), col + n, col + run.numel())]
        return torch.cat([canvas, run[n:]]), grids, []

