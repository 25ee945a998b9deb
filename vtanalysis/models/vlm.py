"""`VLM`: a Hugging Face vision-language model, its processor and its family adapter, in one object."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..devices import execution_device
from ..errors import LayerError, PromptError, UnsupportedModelError, VTAError, WeightsError
from ..scoped import scoped
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


def load_vlm(name_or_path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
             attn_implementation: str = "sdpa", strict: bool = True, device_map: str | dict | None = None) -> VLM:
    """Load a supported VLM from a Hugging Face id or a local folder.

    Args:
        name_or_path: a hub id ("llava-hf/llava-1.5-7b-hf"), a local folder, "demo" (the trained
            demo LLaVA shipped in the package), or the name of a bundled tiny random model
            ("tiny-llava", "tiny-llava-next", "tiny-llava-onevision", "tiny-qwen2-vl", "tiny-qwen3-vl",
            "tiny-internvl", "tiny-gemma3").
        device: where to put the model; "auto" spreads it over every visible GPU (device_map="auto").
        dtype: weight dtype; default float32 on CPU, the checkpoint's dtype elsewhere and under a device_map.
        attn_implementation: the model's attention backend ("sdpa" by default).
        strict: refuse a checkpoint whose weights do not match the model (missing, unexpected or
            mismatched in shape): transformers would leave those weights randomly initialised and
            every result would be computed on a broken model. False loads anyway, with a warning.
        device_map: for a model larger than one GPU: `from_pretrained`'s device map ("auto", "balanced",
            or {module name: device}); accelerate places the layers and moves each layer's inputs,
            `device` is not used. Collectors and pruning methods run on such a model (each tensor
            they build goes to the layer that uses it). Checkpoints only, not the bundled tiny models.
    Raises:
        UnsupportedModelError: the config's family has no adapter (the message lists those that do).
        WeightsError: the checkpoint's weights do not match (strict=True).
    """
    import transformers

    from . import tiny

    name = str(name_or_path)
    if str(device) == "auto":
        device, device_map = "cpu", device_map or "auto"
    device = _checked_device(device)
    dtype = _checked_dtype(dtype)
    if device_map is not None and name in tiny.NAMES:
        raise VTAError(f"device_map is for checkpoints loaded with from_pretrained; {name!r} is built in memory "
                       "and fits one device: pass device= instead.")
    if name in tiny.NAMES:
        return tiny.build(tiny.NAMES[name], device=device, attn_implementation=attn_implementation)
    if name == "demo":
        from . import demo

        if not demo.available():
            raise UnsupportedModelError(f"the demo model's weights are missing from {demo.WEIGHTS}; "
                                        "run `vtanalysis train-demo` to make them.")
        vlm = load_vlm(demo.WEIGHTS, device=device, dtype=dtype, attn_implementation=attn_implementation, strict=strict,
                       device_map=device_map)
        vlm.name = "demo"
        return vlm
    try:
        config = transformers.AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        where = "a local folder without a usable config.json" if Path(name).exists() else \
            "neither a local folder nor a Hugging Face hub id that can be downloaded from here"
        raise UnsupportedModelError(f"cannot load a model from {name!r}: it is {where} ({type(err).__name__}). "
                                    f"Pass a model folder (config.json + weights), a hub id, or a bundled name: "
                                    f"demo, {', '.join(tiny.NAMES)}.") from None
    adapter = adapter_for(config)
    if dtype is None:
        dtype = torch.float32 if torch.device(device).type == "cpu" and device_map is None else "auto"
    model_cls = getattr(transformers, adapter.model_class)
    placed = {} if device_map is None else {"device_map": device_map}
    model, info = model_cls.from_pretrained(name, dtype=dtype, attn_implementation=attn_implementation,
                                            output_loading_info=True, **placed)
    check_loading(name, info, strict)
    if device_map is None:
        model = model.to(device)
    processor = transformers.AutoProcessor.from_pretrained(name)
    return VLM(model, processor, adapter, name)


def _checked_device(device) -> torch.device:
    """`device` as a torch.device that exists here, or a `VTAError` naming the choices."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise VTAError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:1', 'mps', or 'auto' "
                       "(spread over every GPU).") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VTAError(f"device {device!r} was asked for but this torch has no usable CUDA device; use 'cpu'.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise VTAError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here (0..).")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise VTAError(f"device {device!r} was asked for but MPS is not available here; use 'cpu'.")
    return dev


def _checked_dtype(dtype):
    """None, 'auto', a torch.dtype, or its name ('float16', 'bfloat16'...); anything else a `VTAError`."""
    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)
    raise VTAError(f"unknown dtype {dtype!r}: use e.g. 'float32', 'float16', 'bfloat16' or 'auto'.")


def check_loading(name: str, info: dict, strict: bool = True) -> None:
    """Raise `WeightsError` (or warn, strict=False) when transformers' loading report lists weights
    missing from the checkpoint, unexpected in it, or of another shape. Weights a family ties (the
    LM head to the embeddings) are not reported by transformers, so they are never errors."""
    import warnings

    import transformers

    problems = {kind: list(info.get(key) or []) for kind, key in
                (("missing", "missing_keys"), ("unexpected", "unexpected_keys"), ("of another shape", "mismatched_keys"))}
    problems = {kind: keys for kind, keys in problems.items() if keys}
    if not problems:
        return
    listed = "; ".join(f"{len(keys)} {kind} (e.g. {', '.join(str(k) for k in keys[:3])})" for kind, keys in problems.items())
    message = (f"the checkpoint '{name}' does not match the model transformers {transformers.__version__} builds for it: "
               f"weights {listed}. Loading it would leave those weights at random. Use the transformers release the "
               "checkpoint was saved with (vtanalysis is tested on the range in its README), or convert the "
               "checkpoint's keys; load_vlm(..., strict=False) loads it anyway.")
    if strict:
        raise WeightsError(message)
    warnings.warn(message, stacklevel=3)
