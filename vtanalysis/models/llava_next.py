"""LLaVA-NeXT (`LlavaNextForConditionalGeneration`): anyres = base image + unpadded tiles + newlines.

Sequence order of one image's tokens (as the model's `pack_image_features` builds them):
the base grid (side x side, row-major), then the tile canvas cropped to the image's aspect
ratio, row by row, each row followed by one newline token. Column order in records is
[base grid | tile grid without newlines | newline tokens], so each grid is a contiguous run.
"""
from __future__ import annotations

import torch
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

from ..errors import UnsupportedModelError
from .adapter import split_images
from .layout import Grid, TokenLayout, text_after_images
from .llava import LlavaAdapter


class LlavaNextAdapter(LlavaAdapter):
    family = "llava-next"
    model_types = ("llava_next",)
    model_class = "LlavaNextForConditionalGeneration"
    has_cls = True

    def manual_prompt(self, processor, question, n_images):
        return "[INST] " + "<image>\n" * n_images + question + " [/INST]"

    def tile_grid_shape(self, config, image_size) -> tuple[int, int]:
        """Unpadded (rows, cols) of the tile canvas for an original (height, width), via the model's own code."""
        side = config.vision_config.image_size // config.vision_config.patch_size
        n_rows, n_cols = get_anyres_image_grid_shape(
            image_size, config.image_grid_pinpoints, config.vision_config.image_size
        )
        canvas = torch.empty(1, n_rows * side, n_cols * side)
        unpadded = unpad_image(canvas, torch.as_tensor(image_size))
        return int(unpadded.shape[1]), int(unpadded.shape[2])

    def layouts(self, model_inputs, config, images_per_sample):
        if config.vision_feature_select_strategy != "default":
            raise UnsupportedModelError("vtanalysis supports LLaVA-NeXT with vision_feature_select_strategy='default'.")
        side = config.vision_config.image_size // config.vision_config.patch_size
        ids, mask = model_inputs["input_ids"], model_inputs["attention_mask"]
        sizes = model_inputs["image_sizes"].tolist()
        out, image_idx = [], 0
        for b, n_img in enumerate(images_per_sample):
            first, image_pos, text_pos = text_after_images(ids[b], mask[b], self.image_token_id(config))
            tile_shapes = [self.tile_grid_shape(config, sizes[image_idx + i]) for i in range(n_img)]
            image_idx += n_img
            runs = split_images(image_pos, [side * side + h * (w + 1) for h, w in tile_shapes])
            positions, grids, newlines, image_columns = [], [], [], []
            col = 0
            for i, (run, (h, w)) in enumerate(zip(runs, tile_shapes)):
                rows = run[side * side:].view(h, w + 1)
                parts = [run[: side * side], rows[:, :w].flatten(), rows[:, w]]
                grids.append(Grid(i, "base", (side, side), col, col + side * side))
                grids.append(Grid(i, "tiles", (h, w), col + side * side, col + side * side + h * w))
                newlines.extend(range(col + side * side + h * w, col + run.numel()))
                image_columns.append((col, col + run.numel()))
                positions.extend(parts)
                col += run.numel()
            out.append(
                TokenLayout(
                    seq_len=ids.shape[1],
                    first_position=first,
                    image_positions=torch.cat(positions),
                    text_positions=text_pos,
                    grids=grids,
                    newline_columns=newlines,
                    image_columns=image_columns,
                )
            )
        return out
