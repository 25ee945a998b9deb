"""Qwen2-VL / Qwen2.5-VL: dynamic resolution, 2x2 patch merge, M-RoPE positions.

Each image gives `image_grid_thw` = (t, h, w) in patches; the LLM sees t * (h/m) * (w/m)
merged tokens (m = spatial_merge_size), row-major over the merged grid, frame by frame.
"""
from __future__ import annotations

import torch

from .adapter import Adapter, split_images
from .layout import Grid, TokenLayout, text_after_images


class Qwen2VLAdapter(Adapter):
    family = "qwen2-vl"
    model_types = ("qwen2_vl",)
    model_class = "Qwen2VLForConditionalGeneration"
    has_cls = False  # the Qwen vision tower has no [CLS] token

    def _token(self, processor, attr: str, default: str) -> str:
        return getattr(processor.tokenizer, attr, None) or default

    def manual_prompt(self, processor, question, n_images):
        start = self._token(processor, "vision_start_token", "<|vision_start|>")
        end = self._token(processor, "vision_end_token", "<|vision_end|>")
        return (start + processor.image_token + end) * n_images + question

    def layouts(self, model_inputs, config, images_per_sample):
        merge = config.vision_config.spatial_merge_size
        thw = model_inputs["image_grid_thw"].tolist()
        ids, mask = model_inputs["input_ids"], model_inputs["attention_mask"]
        out, image_idx = [], 0
        for b, n_img in enumerate(images_per_sample):
            first, image_pos, text_pos = text_after_images(ids[b], mask[b], self.image_token_id(config))
            shapes = thw[image_idx: image_idx + n_img]
            image_idx += n_img
            runs = split_images(image_pos, [t * (h // merge) * (w // merge) for t, h, w in shapes])
            grids, image_columns, col = [], [], 0
            for i, (t, h, w) in enumerate(shapes):
                hm, wm = h // merge, w // merge
                image_columns.append((col, col + t * hm * wm))
                for frame in range(t):
                    name = "image" if t == 1 else f"frame{frame}"
                    grids.append(Grid(i, name, (hm, wm), col, col + hm * wm))
                    col += hm * wm
            out.append(
                TokenLayout(
                    seq_len=ids.shape[1],
                    first_position=first,
                    image_positions=torch.cat(runs),
                    text_positions=text_pos,
                    grids=grids,
                    image_columns=image_columns,
                )
            )
        return out


class Qwen25VLAdapter(Qwen2VLAdapter):
    family = "qwen2.5-vl"
    model_types = ("qwen2_5_vl",)
    model_class = "Qwen2_5_VLForConditionalGeneration"
