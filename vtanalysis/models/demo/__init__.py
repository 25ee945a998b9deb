"""The demo model organisms: small LLaVAs (CLIP vision tower, MLP projector, Llama decoder) trained
here on `data.shapes` scenes and loaded with no network.

All read 96 px images, patch 8 -> a 12 x 12 grid of 144 image tokens, with a word-level
tokenizer and LLaVA-1.5's prompt "USER: <image>\\n{question} ASSISTANT:".

    GROWN  `load_vlm("demo")` (`WEIGHTS`): SMALL's tower made contrastive (its CLIP in `WEIGHTS / "clip"`)
           and its 4-layer decoder grown to 16 layers, then fine-tuned (`train_grow`; 0.988 held-out).
    SMALL  `load_vlm("demo-small")` (`SMALL_WEIGHTS`): vision 128-d x 4 layers (`vision_feature_layer=-1`),
           Llama 128-d x 4 layers; trained end to end by `train_demo.train` (the vision tower only
           through the LLM and per-patch losses).
    DEEP   vision 128-d x 6 layers read at layer -2 as LLaVA-1.5 does, pretrained contrastively with
           a 3-layer text encoder (a CLIP, `CLIP_WEIGHTS`) and frozen; Llama 128-d x 16 layers;
           trained by `train_deep.train` in LLaVA's stages; stalled at 0.55 held-out, not shipped.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import transformers

from ...data import shapes
from ..tiny import LLAVA_TEMPLATE
from ..wordtok import BASE_WORDS, word_tokenizer

WEIGHTS = Path(__file__).parent / "weights"  # `load_vlm("demo")`: the grown 16-layer model
SMALL_WEIGHTS = Path(__file__).parent / "weights_small"  # `load_vlm("demo-small")`: the 4-layer model
IMAGE_SIZE, PATCH = shapes.SIZE, 8
EXTRA_WORDS = "describe image".split()


@dataclass(frozen=True)
class Shape:
    """Sizes of a demo model; `feature_layer` is LLaVA's `vision_feature_layer`."""
    width: int = 128
    layers: int = 4
    vision_layers: int = 4
    feature_layer: int = -1
    mlp: int = 3  # Llama intermediate size = mlp x width
    text_layers: int = 3  # the CLIP text encoder (DEEP only)


SMALL = Shape()
DEEP = Shape(layers=16, vision_layers=6, feature_layer=-2, mlp=2)


def processor() -> transformers.LlavaProcessor:
    tok = word_tokenizer([*BASE_WORDS, *shapes.WORDS, *EXTRA_WORDS], extra_special=["<image>"])
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                                      crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return transformers.LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=PATCH,
                                       vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                       chat_template=LLAVA_TEMPLATE, image_token="<image>")


def vision_config(shape: Shape = SMALL) -> transformers.CLIPVisionConfig:
    return transformers.CLIPVisionConfig(hidden_size=shape.width, intermediate_size=2 * shape.width,
                                         num_hidden_layers=shape.vision_layers, num_attention_heads=4,
                                         image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=shape.width)


def clip_config(proc: transformers.LlavaProcessor, shape: Shape = DEEP) -> transformers.CLIPConfig:
    """The contrastive pair: `vision_config(shape)` and a causal text encoder over the demo vocabulary,
    pooled at "</s>" (texts end with it), both projected to `width` dimensions."""
    tok = proc.tokenizer
    text = transformers.CLIPTextConfig(vocab_size=len(tok), hidden_size=shape.width, intermediate_size=2 * shape.width,
                                       num_hidden_layers=shape.text_layers, num_attention_heads=4,
                                       max_position_embeddings=64, projection_dim=shape.width,
                                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                       eos_token_id=tok.eos_token_id)
    return transformers.CLIPConfig(text_config=text.to_dict(), vision_config=vision_config(shape).to_dict(),
                                   projection_dim=shape.width)


def config(proc: transformers.LlavaProcessor, shape: Shape = SMALL) -> transformers.LlavaConfig:
    tok, width = proc.tokenizer, shape.width
    vision = vision_config(shape)
    text = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=shape.mlp * width,
                                    num_hidden_layers=shape.layers, num_attention_heads=4, num_key_value_heads=4,
                                    max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                    tie_word_embeddings=False)
    return transformers.LlavaConfig(vision_config=vision, text_config=text,
                                    image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=shape.feature_layer,
                                    vision_feature_select_strategy="default")


def untrained(seed: int = 0, shape: Shape = SMALL):
    """A randomly initialised demo-shaped model and its processor."""
    import torch

    from ..vlm import VLM

    proc = processor()
    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration(config(proc, shape))
    return VLM(model, proc, name="demo (untrained)")


def clip():
    """The deep demo's CLIP (vision tower + text encoder, trained contrastively; `train_deep`) and its
    processor, from `WEIGHTS / "clip"`."""
    if not (WEIGHTS / "clip" / "config.json").is_file():
        from ...errors import UnsupportedModelError

        raise UnsupportedModelError(f"no demo CLIP in {WEIGHTS / 'clip'}: the shipped demo predates it; "
                                    "`vtanalysis train-demo --recipe deep` makes one.")
    model = transformers.CLIPModel.from_pretrained(WEIGHTS / "clip")
    return model.eval(), transformers.CLIPProcessor.from_pretrained(WEIGHTS / "clip")


def available(folder: Path = WEIGHTS) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))
