"""Gemma 3 (`Gemma3ForConditionalGeneration`): SigLIP patches average-pooled to a fixed token grid,
and bidirectional attention among an image's tokens during the prefill.

Each image is resized to the tower's input (896 px, patch 14: 64 x 64 patches in the released
models) and pooled to `mm_tokens_per_image` tokens (256: a 16 x 16 grid), row-major, placed
between `<start_of_image>` and `<end_of_image>`; the prompt's placeholder is `<start_of_image>`
(the processor's `image_token`), the expanded tokens are `<image_soft_token>` (config
`image_token_id`). The prefill mask is causal OR "same image": every token of an image run
attends to every token of that run (the model's `token_type_ids`), so the pruning engine builds
its masks from `attention_blocks`. Pan-and-scan crops (off by default) are not handled. [CLS]-saliency
methods rank by the attention each patch receives at the tower's last layer, averaged over each
token's pooled patches (`pack_vision`); their vision features are that layer's output, before the
tower's post-layernorm the projector reads.
"""
from __future__ import annotations

import math

import torch

from ..errors import UnsupportedModelError
from .adapter import Adapter, image_runs
from .layout import Grid


class Gemma3Adapter(Adapter):
    family = "gemma3"
    model_types = ("gemma3",)
    model_class = "Gemma3ForConditionalGeneration"
    has_cls = False  # SigLIP: every vision token is a patch
    received_saliency = True  # [CLS]-saliency methods rank by the attention each patch receives
    bidirectional_images = True

    def manual_prompt(self, processor, question, n_images):
        return ("<start_of_turn>user\n" + f"{processor.image_token}\n" * n_images + question + "<end_of_turn>\n"
                "<start_of_turn>model\n")

    def processor_images(self, images):
        return images  # per sample: the processor counts placeholders per sample

    def side(self, config) -> int:
        side = math.isqrt(config.mm_tokens_per_image)
        if side * side != config.mm_tokens_per_image:
            raise UnsupportedModelError(f"mm_tokens_per_image={config.mm_tokens_per_image} is not a square grid.")
        return side

    def image_specs(self, model_inputs, config, images_per_sample, originals):
        side = self.side(config)
        for ids, n_images in zip(model_inputs["input_ids"], images_per_sample):
            if len(image_runs(ids, self.image_token_id(config))) != n_images:
                raise UnsupportedModelError(
                    "the processor gave an image more than one run of image tokens (pan-and-scan crops); vtanalysis "
                    "handles Gemma 3 images without them: leave do_pan_and_scan=False (the processor's default).")
        return [[side] * n for n in images_per_sample]

    def image_tokens(self, side, config):
        return side * side

    def arrange(self, run, side, config, image, col):
        return run, [Grid(image, "image", (side, side), col, col + side * side)], []

    def vision_feature_layer(self, config) -> int:
        """The projector reads the tower's last layer (Gemma 3 has no `vision_feature_layer`)."""
        return config.vision_config.num_hidden_layers - 1

    def pack_vision(self, vlm, batch, per_input):
        """Per-patch values [V, P^2, D] averaged over each token's kernel x kernel patches, as the model's
        projector pools the features: [P^2 / kernel^2, D] per image, row-major."""
        proj = vlm.model.model.multi_modal_projector
        p, d = proj.patches_per_image, per_input.shape[-1]
        grid = per_input.transpose(1, 2).reshape(-1, d, p, p)
        return list(torch.nn.functional.avg_pool2d(grid, proj.kernel_size).flatten(2).transpose(1, 2))

    def attention_blocks(self, model_inputs) -> torch.Tensor | None:
        """[B, L] long: the index of the image run each token belongs to (-1 for text), as the model
        derives it from `token_type_ids`; tokens of one run attend to each other both ways."""
        is_image = model_inputs["token_type_ids"] == 1
        starts = is_image & ~torch.nn.functional.pad(is_image, (1, 0))[:, :-1]
        return torch.where(is_image, starts.long().cumsum(1) - 1, -1)
