"""Qwen2-VL / Qwen2.5-VL / Qwen3-VL: dynamic resolution, 2x2 patch merge, M-RoPE positions.

Each image gives `image_grid_thw` = (t, h, w) in patches; the LLM sees t * (h/m) * (w/m)
merged tokens (m = spatial_merge_size), row-major over the merged grid, frame by frame.
"""
from __future__ import annotations

from .adapter import Adapter, per_sample
from .layout import Grid


class Qwen2VLAdapter(Adapter):
    family = "qwen2-vl"
    mrope = True
    model_types = ("qwen2_vl",)
    model_class = "Qwen2VLForConditionalGeneration"
    has_cls = False  # the Qwen vision tower has no [CLS] token
    resizable = True  # dynamic resolution: tokens follow the pixel count

    def manual_prompt(self, processor, question, n_images):
        start = getattr(processor.tokenizer, "vision_start_token", None) or "<|vision_start|>"
        end = getattr(processor.tokenizer, "vision_end_token", None) or "<|vision_end|>"
        return (start + processor.image_token + end) * n_images + question

    def image_specs(self, model_inputs, config, images_per_sample, originals):
        merge = config.vision_config.spatial_merge_size
        merged = [(t, h // merge, w // merge) for t, h, w in model_inputs["image_grid_thw"].tolist()]
        return per_sample(merged, images_per_sample)

    def image_tokens(self, thw, config):
        t, h, w = thw
        return t * h * w

    def arrange(self, run, thw, config, image, col):
        t, h, w = thw
        grids = [Grid(image, "image" if t == 1 else f"frame{f}", (h, w), col + f * h * w, col + (f + 1) * h * w)
                 for f in range(t)]
        return run, grids, []


class Qwen25VLAdapter(Qwen2VLAdapter):
    family = "qwen2.5-vl"
    model_types = ("qwen2_5_vl",)
    model_class = "Qwen2_5_VLForConditionalGeneration"


class Qwen3VLAdapter(Qwen2VLAdapter):
    """Qwen3-VL: as Qwen2.5-VL (patch 16, so 32 px per merged token in the released models) with
    interleaved M-RoPE sections (inside the model's rotary embedding: nothing to arrange) and
    DeepStack: features of several vision layers are added to the hidden states at the image
    positions after each of the first len(deepstack_visual_indexes) decoder layers. The pruning
    engine adds them itself after layers that see a pruned sequence, to the kept tokens only."""

    family = "qwen3-vl"
    model_types = ("qwen3_vl",)
    model_class = "Qwen3VLForConditionalGeneration"
    deepstack = True
