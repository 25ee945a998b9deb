"""`VLM`: a Hugging Face vision-language model, its processor and its family adapter, in one object."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .._core.devices import execution_device
from .._core.scoped import scoped
from ..errors import LayerError, PromptError
from .adapter import Adapter
from .images import load_image
from .layout import TokenLayout
from .registry import adapter_for


@dataclass
class VLMInputs:
    """A prepared batch.

    Attributes:
        model_inputs: the dict to pass to `vlm.model(**model_inputs)` (input_ids [B, L],
            attention_mask [B, L], pixel values and the family's image-size tensors).
        layouts: one `TokenLayout` per sample.
        prompts: the prompt strings the processor tokenised.
        images_per_sample: how many images each sample has.
        image_sizes: the processor's (height, width) per image as host integers, when the family
            has them (LLaVA-NeXT), so code on the hot path never reads them back from the device.
        questions: the questions as passed to `VLM.prepare` (None when it got full prompts);
            methods that encode the question by itself (CDPruner's CLIP relevance) read them.
    """

    model_inputs: dict
    layouts: list[TokenLayout]
    prompts: list[str]
    images_per_sample: list[int] = field(default_factory=list)
    image_sizes: list | None = None
    questions: list[str] | None = None

    def __len__(self) -> int:
        return len(self.layouts)

    def to(self, device) -> "VLMInputs":
        moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.model_inputs.items()}
        sizes = self.image_sizes
        if sizes is None and torch.is_tensor(self.model_inputs.get("image_sizes")):
            sizes = self.model_inputs["image_sizes"].tolist()  # read before the move, once
        return VLMInputs(moved, self.layouts, self.prompts, self.images_per_sample, sizes, self.questions)


class VLM:
    """A loaded model. Use `load_vlm` (or `models.tiny.build`) to make one.

    Attributes:
        model: the stock `transformers` model (e.g. `LlavaForConditionalGeneration`).
        processor: its processor (chat template, tokenizer, image processor).
        adapter: the family adapter that knows its token layout.
        name: the id or path it was loaded from.
    """

    def __init__(self, model: nn.Module, processor, adapter: Adapter | None = None, name: str = ""):
        self.model = model.eval()
        self.processor = processor
        self.adapter = adapter or adapter_for(model.config)
        self.name = name or getattr(model.config, "_name_or_path", "")
        # Hugging Face fast tokenizers are not thread-safe (a call that sets padding while another
        # thread encodes raises "Already borrowed"): threads sharing this VLM take turns with it
        self.tokenizer_lock = threading.RLock()

    def __repr__(self) -> str:
        return (f"VLM({self.name!r}, family={self.adapter.family}, layers={self.num_layers}, "
                f"device={self.device}, dtype={self.dtype})")

    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        """Where the inputs go: the device of the input embeddings (under a `device_map` the layers
        may sit on others; accelerate moves each layer's inputs to its own)."""
        return execution_device(self.model.get_input_embeddings())

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.adapter.decoder_layers(self.model)

    @property
    def num_layers(self) -> int:
        return len(self.decoder_layers)

    def language_model_inputs(self, batch: VLMInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs_embeds [B, L, D], position_ids [B or 1, L] or M-RoPE [3, B, L]) exactly as the model
        hands them to its language model (vision tower and projector run; the language model does not)."""
        lm = self.adapter.language_model(self.model)
        seen = {}

        class Stop(Exception):
            pass

        def grab(module, args, kwargs):
            seen.update(kwargs)
            raise Stop

        try:
            with scoped(lm, "pre", grab), torch.inference_mode():
                self.model(**batch.model_inputs)
        except Stop:
            pass
        embeds, pos = seen["inputs_embeds"], seen.get("position_ids")
        if pos is None:
            pos = torch.arange(embeds.shape[1], device=embeds.device)[None]
        return embeds, pos

    def check_layer(self, layer: int, what: str = "layer") -> int:
        """Return `layer` as a non-negative index, or raise `LayerError` naming the valid range."""
        n = self.num_layers
        if not isinstance(layer, int) or not -n <= layer < n:
            raise LayerError(f"{what} {layer!r} is out of range: this model has {n} decoder layers (0..{n - 1}).")
        return layer % n

    def prepare(self, images, questions=None, *, prompts=None) -> VLMInputs:
        """Apply the model's chat template and processor to a batch.

        Args:
            images: one entry per sample: an image (path, PIL image or array) or a list of images.
            questions: one question per sample; the chat template wraps it with image placeholders.
            prompts: instead of questions, full prompts that already hold one image placeholder
                (e.g. "<image>") per image.
        Returns:
            `VLMInputs` on the model's device, padded on the left (the generation convention).
        """
        if (questions is None) == (prompts is None):
            raise PromptError("pass exactly one of questions= or prompts= to vlm.prepare.")
        texts = list(questions if questions is not None else prompts)
        if isinstance(images, (str, Path)) or not hasattr(images, "__len__"):
            images = [images]
        if len(texts) == 0 or len(images) == 0:
            raise PromptError("vlm.prepare got an empty batch: pass one image (or a list of images) and one "
                              "question per sample, e.g. vlm.prepare([image], ['what is this ?']).")
        per_sample = [list(x) if isinstance(x, (list, tuple)) else [x] for x in images]
        if len(per_sample) != len(texts):
            raise PromptError(f"got {len(per_sample)} image entries for {len(texts)} prompts; give one entry per sample.")
        if questions is not None:
            for i, q in enumerate(texts):
                if not isinstance(q, str) or not q.strip():
                    raise PromptError(f"question {i} is empty: ask something about the image, e.g. "
                                      "'what color is the triangle ?'.")
        pil = [[load_image(im) for im in ims] for ims in per_sample]
        counts = [len(ims) for ims in pil]
        grouped = self.adapter.processor_images(pil)
        with self.tokenizer_lock:
            if questions is not None:
                texts = [self.adapter.build_prompt(self.processor, q, n) for q, n in zip(texts, counts)]
            for text, n in zip(texts, counts):
                self.adapter.check_prompt(self.processor, text, n)
            self.processor.tokenizer.padding_side = "left"
            inputs = self.processor(images=grouped, text=texts, return_tensors="pt", padding=True)
        model_inputs = dict(inputs)
        length = model_inputs["input_ids"].shape[1]
        context = getattr(self.config.text_config, "max_position_embeddings", None)
        if context is not None and length > context:
            raise PromptError(f"the longest prompt is {length} tokens (image tokens included) but {self.name}'s "
                              f"language model has a context of {context} positions; shorten the question or "
                              "use fewer or smaller images.")
        layouts = self.adapter.layouts(model_inputs, self.config, counts,
                                       [(im.height, im.width) for ims in pil for im in ims])
        return VLMInputs(model_inputs, layouts, texts, counts,
                         questions=list(questions) if questions is not None else None).to(self.device)
