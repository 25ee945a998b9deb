"""What every model-family adapter provides: prompts, token layouts and the decoder layers.

A family adapter is a small subclass of `Adapter`; the registry (`models.registry`) picks one
from a model config's `model_type`.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import PromptError, UnsupportedModelError
from .layout import TokenLayout, text_after_images


class Adapter:
    """Base class of model-family adapters.

    Class attributes:
        family: human name of the family ("llava-1.5").
        model_types: `config.model_type` values this adapter serves.
        model_class: name of the `transformers` class to load.
        has_cls: whether [CLS]-saliency methods can run: the vision tower emits a [CLS] token and each
            LLM image token is one of its patches.
        no_cls_reason: why not, where has_cls is False (ends the error [CLS] methods raise).
        received_saliency: where has_cls is False, whether [CLS]-saliency methods (FasterVLM, AdaFV,
            SCOPE, VisPruner) may rank by the attention each patch receives at the feature layer
            instead (VisPruner's rule for SigLIP towers); VisionZip and CDPruner still need the token.
        mrope: whether positions are multimodal RoPE ids that encode the image grid (Qwen2-VL), so
            renumbering positions after pruning is not defined.
        resizable: whether the processor's image-token count follows the image's size (dynamic
            resolution, anyres tiling), so a smaller image is a smaller budget (`downsample`).
        bidirectional_images: whether the prefill lets an image's tokens attend to each other both
            ways (Gemma 3); `attention_blocks` then says which tokens form each image.
        deepstack: whether the language model adds vision features at the image positions after its
            first layers (Qwen3-VL's DeepStack: `deepstack_visual_embeds` of its call).
    """

    family: str = ""
    model_types: tuple[str, ...] = ()
    model_class: str = ""
    has_cls: bool = True
    no_cls_reason: str = "has no [CLS] token"
    received_saliency: bool = False
    mrope: bool = False
    resizable: bool = False
    bidirectional_images: bool = False
    deepstack: bool = False

    # -- prompts ------------------------------------------------------------------------------
    def image_placeholder(self, processor) -> str:
        return processor.image_token

    def build_prompt(self, processor, question: str, n_images: int) -> str:
        """Prompt for one sample with the model's own chat template (fallback: `manual_prompt`)."""
        placeholder = self.image_placeholder(processor)
        if getattr(processor, "chat_template", None):
            content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": question}]
            conversation = [{"role": "user", "content": content}]
            prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
            if prompt.count(placeholder) == n_images:
                return prompt
        # Some templates (e.g. Qwen2-VL base) ignore image parts: build the prompt by hand.
        return self.manual_prompt(processor, question, n_images)

    def manual_prompt(self, processor, question: str, n_images: int) -> str:
        return "".join(self.image_placeholder(processor) + "\n" for _ in range(n_images)) + question

    def check_prompt(self, processor, prompt: str, n_images: int) -> None:
        placeholder = self.image_placeholder(processor)
        found = prompt.count(placeholder)
        if found == 0:
            raise PromptError(
                f"the prompt has no image placeholder '{placeholder}': {prompt[:80]!r}. "
                f"Put one '{placeholder}' where each image goes, or pass questions= and let "
                "vlm.prepare apply the chat template."
            )
        if found != n_images:
            raise PromptError(
                f"the prompt has {found} image placeholder(s) '{placeholder}' but {n_images} image(s) were "
                f"given. Give one image per placeholder."
            )

    def processor_images(self, images: list[list]) -> list:
        """The `images=` argument of the processor for per-sample lists of PIL images: flat by default
        (images of all samples in order)."""
        return [im for ims in images for im in ims]

    # -- layout -------------------------------------------------------------------------------
    def image_token_id(self, config) -> int:
        return int(config.image_token_id)

    def image_specs(self, model_inputs, config, images_per_sample: list[int], originals: list) -> list[list]:
        """Per sample, per image: what `image_tokens` and `arrange` need (a grid shape, a size...).

        originals: (height, width) of each image as given, before the processor (all samples in order).
        """
        raise NotImplementedError

    def image_tokens(self, spec, config) -> int:
        """Number of LLM tokens of one image."""
        raise NotImplementedError

    def arrange(self, run: torch.Tensor, spec, config, image: int, col: int):
        """Column order of one image's token positions `run` (sequence order).

        Returns (positions [n] in column order, grids, newline columns), columns counted from `col`.
        """
        raise NotImplementedError

    def layouts(self, model_inputs, config, images_per_sample: list[int], originals: list) -> list[TokenLayout]:
        """One `TokenLayout` per sample of a processed batch (input_ids [B, L], attention_mask [B, L]);
        `originals` as in `image_specs`."""
        ids, mask = model_inputs["input_ids"], model_inputs["attention_mask"]
        specs = self.image_specs(model_inputs, config, images_per_sample, originals)
        out = []
        for b in range(ids.shape[0]):
            first, image_pos, text_pos = text_after_images(ids[b], mask[b], self.image_token_id(config))
            runs = split_images(image_pos, [self.image_tokens(spec, config) for spec in specs[b]])
            positions, grids, newlines, image_columns, col = [], [], [], [], 0
            for i, (run, spec) in enumerate(zip(runs, specs[b])):
                order, image_grids, image_newlines = self.arrange(run, spec, config, i, col)
                positions.append(order)
                grids.extend(image_grids)
                newlines.extend(image_newlines)
                image_columns.append((col, col + run.numel()))
                col += run.numel()
            out.append(TokenLayout(seq_len=ids.shape[1], first_position=first, image_positions=torch.cat(positions),
                                   text_positions=text_pos, grids=grids, newline_columns=newlines,
                                   image_columns=image_columns))
        return out

    def grid_extent(self, processor, grid, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
        """The part of the original image (width, height) a grid covers, as fractions (x0, y0, x1, y1).

        Default: the whole image (resized, not cropped).
        """
        return 0.0, 0.0, 1.0, 1.0

    def attention_blocks(self, model_inputs) -> torch.Tensor | None:
        """[B, L] long on the inputs' device: per token, the image block it attends to both ways
        during the prefill (-1: causal only); None where attention is causal (every family but Gemma 3)."""
        return None

    def pack_vision(self, vlm, batch, per_input: torch.Tensor) -> list[torch.Tensor]:
        """Per-patch vision values [V, N, D] (V: the tower's inputs, in the batch's order) as one
        [n_tokens, D] tensor per image, in the image's sequence order (NaN at newline tokens).
        Default: one tower input per image, one token per patch."""
        return list(per_input)

    # -- vision tower -------------------------------------------------------------------------
    def vision_feature_layer(self, config) -> int:
        """0-based vision encoder layer whose output the projector reads. `hidden_states[f]` is the
        output of layer f - 1 (index 0 is the embeddings), so `vision_feature_layer` f = -2 means
        layer L_v - 2, as in FasterVLM's `attentions[-2]`."""
        f = config.vision_feature_layer
        if not isinstance(f, int):
            raise UnsupportedModelError(f"vision_feature_layer={f!r}: [CLS] saliency needs a single feature layer.")
        n = config.vision_config.num_hidden_layers
        return n + f if f < 0 else f - 1

    def vision_tower(self, model: nn.Module) -> nn.Module | None:
        """The module that turns the processor's pixel inputs into vision features, its output a
        function of its arguments alone (`vision_tower`; Qwen-VL: `visual`), or None where the
        family has no such module."""
        inner = getattr(model, "model", None)
        return getattr(inner, "vision_tower", None) or getattr(inner, "visual", None)

    def vision_encoder_layers(self, model: nn.Module) -> nn.ModuleList:
        """The vision tower's encoder layers (CLIP / SigLIP: `vision_model.encoder.layers`)."""
        tower = model.model.vision_tower
        return getattr(tower, "vision_model", tower).encoder.layers

    def crop_patches(self, vlm) -> int | None:
        """Patch tokens of one vision-tower input where every input is a fixed-size crop with a [CLS]
        token ((image_size / patch_size)^2), so pre-LLM methods budget per crop as their authors do;
        None where each image is one crop of its own size (no [CLS] tower, dynamic resolution)."""
        if not self.has_cls or not hasattr(vlm.model.model, "vision_tower"):
            return None
        vc = vlm.config.vision_config
        return (vc.image_size // vc.patch_size) ** 2

    def vision_crops(self, vlm, batch) -> int:
        """How many inputs the vision tower sees for `batch`, read on the host (where `crop_patches`
        is not None). Default: one per image."""
        return sum(batch.images_per_sample or [1] * len(batch))

    # -- modules ------------------------------------------------------------------------------
    def language_model(self, model: nn.Module) -> nn.Module:
        """The decoder-only text model (has `.layers`, `.embed_tokens`, `.norm`)."""
        return model.model.language_model

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return self.language_model(model).layers


def per_sample(items: list, images_per_sample: list[int]) -> list[list]:
    """Cut a flat per-image list (images of all samples in order) into one list per sample."""
    out, start = [], 0
    for n in images_per_sample:
        out.append(items[start:start + n])
        start += n
    return out


def split_images(image_pos: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
    """Split a sample's image-token positions [n] into per-image runs of the given sizes."""
    if sum(counts) != image_pos.numel():
        raise PromptError(
            f"the sequence holds {image_pos.numel()} image tokens but the images need {sum(counts)}. "
            "Each image placeholder must be expanded by the model's own processor (pass the raw prompt)."
        )
    return list(torch.split(image_pos, counts))


def image_runs(ids: torch.Tensor, token_id: int) -> list[int]:
    """Lengths of the contiguous runs of `token_id` in one row of input ids [L] (one per image
    where images are wrapped in start and end tokens: InternVL, Gemma 3)."""
    pos = (ids == token_id).nonzero().flatten()
    if pos.numel() == 0:
        return []
    breaks = (pos[1:] - pos[:-1] > 1).nonzero().flatten() + 1
    edges = [0, *breaks.tolist(), pos.numel()]  # ok-host: processor output, before any forward pass
    return [b - a for a, b in zip(edges[:-1], edges[1:])]
