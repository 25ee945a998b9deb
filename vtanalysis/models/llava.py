"""LLaVA-1.5 (`LlavaForConditionalGeneration`): one fixed-size image, one square patch grid."""
from __future__ import annotations

from ..errors import UnsupportedModelError
from .adapter import Adapter
from .layout import Grid


class LlavaAdapter(Adapter):
    family = "llava-1.5"
    model_types = ("llava",)
    model_class = "LlavaForConditionalGeneration"
    has_cls = True

    def manual_prompt(self, processor, question, n_images):
        return "USER: " + "<image>\n" * n_images + question + " ASSISTANT:"

    def check_strategy(self, config) -> None:
        if config.vision_feature_select_strategy != "default":
            raise UnsupportedModelError(
                "vision_feature_select_strategy='full' keeps the vision [CLS] token among the image tokens; "
                f"vtanalysis supports 'default' (patch tokens only), as {self.family} uses.")

    def base_side(self, config) -> int:
        return config.vision_config.image_size // config.vision_config.patch_size

    def image_specs(self, model_inputs, config, images_per_sample, originals):
        self.check_strategy(config)
        return [[self.base_side(config)] * n for n in images_per_sample]

    def image_tokens(self, side, config):
        return side * side

    def grid_extent(self, processor, grid, image_size):
        """LLaVA-1.5 resizes the shortest edge and centre-crops a square: the grid covers that square."""
        if not getattr(processor.image_processor, "do_center_crop", False) or grid.name != "image":
            return 0.0, 0.0, 1.0, 1.0
        w, h = image_size
        side = min(w, h)
        x0, y0 = (w - side) / 2 / w, (h - side) / 2 / h
        return x0, y0, 1 - x0, 1 - y0

    def arrange(self, run, side, config, image, col):
        return run, [Grid(image, "image", (side, side), col, col + side * side)], []
