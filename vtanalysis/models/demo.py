"""The demo model organism: a small LLaVA (CLIP vision tower, MLP projector, Llama decoder) trained
here on `data.shapes` scenes, shipped in `vtanalysis/models/demo_weights/` and loaded by
`load_vlm("demo")` with no network.

Shape: 96 px images, patch 8 -> a 12 x 12 grid of 144 image tokens; vision 128-d x 4 layers
(`vision_feature_layer=-1`, so no CLIP layer is computed in vain); Llama 128-d x 4 layers;
word-level tokenizer; LLaVA-1.5's prompt "USER: <image>\\n{question} ASSISTANT:".
"""
from __future__ import annotations

from pathlib import Path

import transformers

from ..data import shapes
from .tiny import LLAVA_TEMPLATE
from .wordtok import BASE_WORDS, word_tokenizer

WEIGHTS = Path(__file__).parent / "demo_weights"
IMAGE_SIZE, PATCH = shapes.SIZE, 8
EXTRA_WORDS = "describe image".split()


def processor() -> transformers.LlavaProcessor:
    tok = word_tokenizer([*BASE_WORDS, *shapes.WORDS, *EXTRA_WORDS], extra_special=["<image>"])
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                                      crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return transformers.LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=PATCH,
                                       vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                       chat_template=LLAVA_TEMPLATE, image_token="<image>")


def config(proc: transformers.LlavaProcessor, width: int = 128, layers: int = 4) -> transformers.LlavaConfig:
    tok = proc.tokenizer
    vision = transformers.CLIPVisionConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                                           num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH,
                                           projection_dim=width)
    text = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=3 * width,
                                    num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                                    max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                    tie_word_embeddings=False)
    return transformers.LlavaConfig(vision_config=vision, text_config=text,
                                    image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                                    vision_feature_select_strategy="default")


def untrained(seed: int = 0, width: int = 128, layers: int = 4):
    """A randomly initialised demo-shaped model and its processor."""
    import torch

    from .vlm import VLM

    proc = processor()
    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration(config(proc, width, layers))
    return VLM(model, proc, name="demo (untrained)")


def available() -> bool:
    return (WEIGHTS / "config.json").is_file() and any(WEIGHTS.glob("*.safetensors"))
