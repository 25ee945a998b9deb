"""Tiny randomly initialised VLMs of each supported family, built offline for tests and examples.

They have the real architecture classes and real processor classes, scaled down: a few decoder
layers, small widths, small images. `scale_down_config` does the same to a real model's
config.json so tests can run the published processor files on a random model of that shape.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import transformers

from .registry import adapter_for
from .vlm import VLM
from .wordtok import word_tokenizer

NAMES = {"tiny-llava": "llava", "tiny-llava-next": "llava-next", "tiny-llava-onevision": "llava-onevision",
         "tiny-qwen2-vl": "qwen2-vl", "tiny-internvl": "internvl", "tiny-gemma3": "gemma3",
         "tiny-qwen3-vl": "qwen3-vl"}
FAMILIES = tuple(NAMES.values())

LLAVA_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] + ' ' }}{% endif %}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
NEXT_TEMPLATE = (
    "{% for message in messages %}{{ '[INST] ' }}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{{ ' [/INST]' }}{% endfor %}"
)
QWEN_TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ONEVISION_TEMPLATE = (  # the released template's shape: Qwen2 chat turns, images first in the user turn
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
INTERNVL_TEMPLATE = (  # the -hf template's shape: Qwen2 chat turns, "<IMG_CONTEXT>\n" per image first in the turn
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}{% endif %}{% endfor %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
INTERNVL_NAMED = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                  "video_token": "<video>"}
GEMMA3_TEMPLATE = (  # the released template's shape: Gemma turns, "<start_of_image>" per image first in the turn
    "{% for message in messages %}<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<start_of_image>' }}{% endif %}{% endfor %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
GEMMA3_NAMED = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
QWEN_SPECIAL = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

# Text decoder shared by the tiny families: GQA (4 query heads, 2 KV heads) so head grouping is exercised.
# A wide initialiser makes attention peaked rather than uniform, so row comparisons are meaningful.
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=2048, initializer_range=0.2)


def _llava(tok, num_layers):
    img = tok.convert_tokens_to_ids("<image>")
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=32, patch_size=4, projection_dim=32)
    text = transformers.LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **{**TEXT, "num_hidden_layers": num_layers})
    config = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_id=img,
                                      vision_feature_layer=-2, vision_feature_select_strategy="default")
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = transformers.LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=4,
                                            vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                            chat_template=LLAVA_TEMPLATE, image_token="<image>")
    return config, processor


def _llava_next(tok, num_layers):
    img = tok.convert_tokens_to_ids("<image>")
    pinpoints = [[32, 64], [64, 32], [64, 64], [32, 96], [96, 32]]
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=32, patch_size=8, projection_dim=32)
    text = transformers.MistralConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, sliding_window=None,
                                      **{**TEXT, "num_hidden_layers": num_layers})
    config = transformers.LlavaNextConfig(vision_config=vision, text_config=text, image_token_id=img,
                                          image_grid_pinpoints=pinpoints, vision_feature_layer=-2,
                                          vision_feature_select_strategy="default")
    image_processor = transformers.LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                           image_grid_pinpoints=pinpoints)
    processor = transformers.LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                                                vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                                chat_template=NEXT_TEMPLATE, image_token="<image>")
    return config, processor


def _llava_onevision(tok, num_layers):
    """SigLIP (patch 8 on 32 px crops: a 4x4 base grid, no [CLS]) and a Qwen2 decoder; crops up to 4x4,
    so that large images pass the released "anyres_max_9" limit and their tile canvas is resized."""
    pinpoints = [[32 * i, 32 * j] for i in range(1, 5) for j in range(1, 5)]
    vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=2, image_size=32, patch_size=8, vision_use_head=False)
    text = transformers.Qwen2Config(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **{**TEXT, "num_hidden_layers": num_layers})
    config = transformers.LlavaOnevisionConfig(
        vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"), image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1, vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9")
    image_processor = transformers.LlavaOnevisionImageProcessor(size={"height": 32, "width": 32},
                                                                image_grid_pinpoints=pinpoints)
    processor = transformers.LlavaOnevisionProcessor(
        image_processor=image_processor, tokenizer=tok, video_processor=transformers.LlavaOnevisionVideoProcessor(),
        num_image_tokens=(32 // 8) ** 2, vision_feature_select_strategy="full", chat_template=ONEVISION_TEMPLATE,
        image_token="<image>", video_token="<video>", vision_aspect_ratio="anyres_max_9")
    return config, processor


def _internvl(tok, num_layers):
    """InternViT (32 px tiles, patch 4: 8x8 patches, pixel-shuffled to 4x4 tokens; [CLS] dropped as
    'default' does) and a Qwen2 decoder; tiling as released (crop_to_patches, thumbnail) with up to 6
    tiles, so wide and tall images get multi-tile canvases."""
    vision = transformers.InternVLVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                               num_attention_heads=2, image_size=32, patch_size=4)
    text = transformers.Qwen2Config(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **{**TEXT, "num_hidden_layers": num_layers})
    config = transformers.InternVLConfig(vision_config=vision, text_config=text, image_token_id=tok.context_image_token_id,
                                         image_seq_length=16, vision_feature_layer=-1,
                                         vision_feature_select_strategy="default")
    image_processor = transformers.GotOcr2ImageProcessor(size={"height": 32, "width": 32}, crop_to_patches=True,
                                                         min_patches=1, max_patches=6)
    processor = transformers.InternVLProcessor(image_processor=image_processor, tokenizer=tok,
                                               video_processor=transformers.InternVLVideoProcessor(),
                                               image_seq_length=16, chat_template=INTERNVL_TEMPLATE)
    return config, processor


def _gemma3(tok, num_layers):
    """SigLIP (32 px, patch 4: 8x8 patches, average-pooled to 4x4 = 16 tokens per image) and a Gemma 3
    decoder with sliding and full layers (their own rotary bases, as released), bidirectional attention
    within each image in the prefill."""
    head_dim = TEXT["hidden_size"] // TEXT["num_attention_heads"]
    types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(num_layers)]
    text = transformers.Gemma3TextConfig(
        vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=TEXT["max_position_embeddings"],
        layer_types=types, rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                                            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0}},
        **{**TEXT, "num_hidden_layers": num_layers})
    vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=2, image_size=32, patch_size=4, vision_use_head=False)
    config = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=16,
                                       boi_token_index=tok.boi_token_id, eoi_token_index=tok.eoi_token_id,
                                       image_token_index=tok.image_token_id)
    processor = transformers.Gemma3Processor(image_processor=transformers.Gemma3ImageProcessor(size={"height": 32, "width": 32}),
                                             tokenizer=tok, image_seq_length=16, chat_template=GEMMA3_TEMPLATE)
    return config, processor


def _qwen2_vl(tok, num_layers):
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    head_dim = TEXT["hidden_size"] // TEXT["num_attention_heads"]
    text = dict(TEXT, num_hidden_layers=num_layers, vocab_size=len(tok), max_window_layers=num_layers,
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section(head_dim)})
    vision = dict(depth=2, embed_dim=32, hidden_size=TEXT["hidden_size"], num_heads=2, mlp_ratio=2,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    config = transformers.Qwen2VLConfig(text_config=text, vision_config=vision,
                                        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                                        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    image_processor = transformers.Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=168 * 168, patch_size=14,
                                                         merge_size=2, temporal_patch_size=2)
    video_processor = transformers.Qwen2VLVideoProcessor()
    processor = transformers.Qwen2VLProcessor(image_processor=image_processor, tokenizer=tok,
                                              video_processor=video_processor, chat_template=QWEN_TEMPLATE)
    return config, processor


def _qwen3_vl(tok, num_layers):
    """Qwen3-VL: patch 16, 2x2 merge (up to 6x6 merged tokens at <= 192x192 px), interleaved M-RoPE, and
    DeepStack features from vision layers 0 and 1 added after decoder layers 0 and 1."""
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    head_dim = TEXT["hidden_size"] // TEXT["num_attention_heads"]
    text = dict(TEXT, num_hidden_layers=num_layers, vocab_size=len(tok), head_dim=head_dim, pad_token_id=tok.pad_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section(head_dim),
                                 "mrope_interleaved": True})
    vision = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=TEXT["hidden_size"], num_position_embeddings=64,
                  deepstack_visual_indexes=[0, 1])
    config = transformers.Qwen3VLConfig(text_config=text, vision_config=vision,
                                        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                                        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    image_processor = transformers.Qwen2VLImageProcessor(min_pixels=64 * 64, max_pixels=192 * 192, patch_size=16,
                                                         merge_size=2, temporal_patch_size=2)
    processor = transformers.Qwen3VLProcessor(image_processor=image_processor, tokenizer=tok,
                                              video_processor=transformers.Qwen3VLVideoProcessor(), chat_template=QWEN_TEMPLATE)
    return config, processor


def mrope_section(head_dim: int) -> list[int]:
    """M-RoPE (t, h, w) rotary sections summing to head_dim / 2, in Qwen2-VL's 1:1.5:1.5 proportion."""
    half = head_dim // 2
    return [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]


_BUILDERS = {"llava": _llava, "llava-next": _llava_next, "llava-onevision": _llava_onevision, "qwen2-vl": _qwen2_vl,
             "internvl": _internvl, "gemma3": _gemma3, "qwen3-vl": _qwen3_vl}
_SPECIAL = {"llava-onevision": ["<video>", "<|im_start|>", "<|im_end|>"], "qwen2-vl": QWEN_SPECIAL,
            "internvl": ["<|im_start|>", "<|im_end|>"], "gemma3": ["<start_of_turn>", "<end_of_turn>"],
            "qwen3-vl": QWEN_SPECIAL}
_NAMED = {"internvl": INTERNVL_NAMED, "gemma3": GEMMA3_NAMED}


def build(family: str, seed: int = 0, *, num_layers: int = 3, device="cpu", attn_implementation: str = "sdpa") -> VLM:
    """A randomly initialised tiny VLM of `family` ("llava", "llava-next", "llava-onevision",
    "qwen2-vl", "qwen3-vl", "internvl" or "gemma3"), float32.

    Image tokens: llava 8x8 grid (32 px, patch 4); llava-next 4x4 base grid + unpadded tiles
    + newlines (32 px tiles, patch 8); llava-onevision the same with SigLIP (no [CLS]), crops up to
    4x4 and the anyres_max_9 resize; qwen2-vl up to 6x6 merged tokens (<= 168x168 px, patch 14);
    internvl 4x4 tokens per 32 px tile (pixel shuffle of 8x8 patches), up to 6 tiles + a thumbnail;
    gemma3 4x4 pooled tokens per image, attended bidirectionally within the image in the prefill;
    qwen3-vl up to 6x6 merged tokens (<= 192x192 px, patch 16) with DeepStack after layers 0 and 1.
    """
    if family not in _BUILDERS:
        raise ValueError(f"unknown tiny family '{family}'; choose one of {', '.join(_BUILDERS)}.")
    extra = ["<image>"] + _SPECIAL.get(family, [])
    tok = word_tokenizer(extra_special=extra, named_special=_NAMED.get(family))
    config, processor = _BUILDERS[family](tok, num_layers)
    config.text_config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model_cls = getattr(transformers, adapter_for(config).model_class)
    model = model_cls(config)
    draw_zero_matrices(model)
    model.set_attn_implementation(attn_implementation)
    return VLM(model.to(device), processor, name=f"tiny-{family}")


@torch.no_grad()
def draw_zero_matrices(model) -> None:
    """Draw, like the model's other weights (normal, std = the text config's initializer_range),
    every weight matrix that transformers initialises to all zeros: Gemma 3's projector
    (`mm_input_projection_weight`) starts at zero, so a random-weight Gemma 3 would give every image
    the same (zero) features and no test could see the image reach the text."""
    config = getattr(model.config, "text_config", model.config)
    std = getattr(config, "initializer_range", 0.02)
    for param in model.parameters():
        if param.dim() == 2 and not param.any():
            param.normal_(0.0, std)


def scale_down_config(config: dict, *, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                      intermediate: int | None = None, vision_hidden: int = 32, vision_layers: int = 2) -> dict:
    """Shrink a real model's config.json dict (depth and widths only) for a random-weight copy.

    Keeps the vocabulary, image size, patch size, token ids and grid settings, so the real
    processor produces real token counts. Sets float32 for exact comparisons.
    """
    cfg = copy.deepcopy(config)
    text_keys = dict(hidden_size=hidden, intermediate_size=intermediate or 2 * hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, num_key_value_heads=kv_heads)
    for scope in (cfg, cfg.get("text_config")):
        if scope is None:
            continue
        scope.update(text_keys)
        scope.pop("layer_types", None)
        if "max_window_layers" in scope:
            scope["max_window_layers"] = layers
        scope["torch_dtype"] = "float32"
        rope = scope.get("rope_scaling") or scope.get("rope_parameters")
        if rope and "mrope_section" in rope:
            rope["mrope_section"] = mrope_section(hidden // heads)
    vision = cfg.get("vision_config", {})
    if "depth" in vision:  # Qwen vision tower
        vision.update(depth=vision_layers, embed_dim=vision_hidden, num_heads=2, hidden_size=hidden,
                      out_hidden_size=hidden, intermediate_size=2 * vision_hidden)
        if "fullatt_block_indexes" in vision:
            vision["fullatt_block_indexes"] = [vision_layers - 1]
    elif vision:
        vision.update(hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                      num_hidden_layers=vision_layers + 1, num_attention_heads=2)
    cfg["torch_dtype"] = "float32"
    return cfg


# Processor settings that LLaVA-NeXT keeps in processor_config.json (absent from some published folders).
NEXT_PROCESSOR_KWARGS = dict(patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1)


def real_config(folder) -> dict:
    """The config.json dict of a released model's folder; for a LLaVA-NeXT folder without one,
    transformers' LlavaNextConfig with a Mistral-7B text config and the folder's grid pinpoints."""
    import json

    folder = Path(folder)
    if (folder / "config.json").exists():
        return json.loads((folder / "config.json").read_text())
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    if pre.get("processor_class") != "LlavaNextProcessor":
        raise ValueError(f"'{folder}' has no config.json; only LLaVA-NeXT folders can do without one.")
    added = json.loads((folder / "added_tokens.json").read_text())
    text = transformers.MistralConfig(vocab_size=max(added.values()) + 1, sliding_window=None).to_dict()
    return transformers.LlavaNextConfig(text_config=text, image_token_id=added["<image>"],
                                        image_grid_pinpoints=pre["image_grid_pinpoints"], vision_feature_layer=-2,
                                        vision_feature_select_strategy="default").to_dict()


def from_real_files(folder, *, seed: int = 0, device="cpu", dtype=torch.float32, attn_implementation: str = "sdpa",
                    full_size: bool = False, **scale) -> VLM:
    """A random-weight model on a released model's config and processor files (no weights needed).

    `scale` goes to `scale_down_config` (hidden, layers, heads, kv_heads, intermediate, ...):
    depth and widths shrink, while vocabulary, image size, patch size, token ids and grid
    settings stay real, so the real processor gives real token counts. `full_size=True` keeps the
    released config as it is (a 7B model: build it on a GPU, `device="cuda"`, in bfloat16).
    The weights are created directly on `device`; torch's default dtype is left as it was.
    """
    cfg = real_config(folder)
    if not full_size:
        cfg = scale_down_config(cfg, **scale)
    config = transformers.AutoConfig.for_model(**cfg)
    config.text_config._attn_implementation = attn_implementation
    adapter = adapter_for(config)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = getattr(transformers, adapter.model_class)(config)
        draw_zero_matrices(model)
    finally:
        torch.set_default_dtype(previous)
    model.set_attn_implementation(attn_implementation)
    extra = NEXT_PROCESSOR_KWARGS if adapter.model_class == "LlavaNextForConditionalGeneration" else {}
    processor = transformers.AutoProcessor.from_pretrained(folder, **extra)
    return VLM(model.eval(), processor, adapter, name=f"random-{Path(folder).name}")


def save_published(vlm: VLM, folder) -> Path:
    """Save `vlm` (weights, config, processor) as the released LLaVA checkpoints lay out their
    weights, so that readers other than transformers (vLLM) load it: transformers writes the CLIP
    tower's weights as `vision_tower.embeddings...`, the released files (and vLLM's loader) name them
    `vision_tower.vision_model.embeddings...`. transformers reads either. Returns the folder."""
    from safetensors.torch import load_file, save_file

    folder = Path(folder)
    vlm.model.save_pretrained(folder)
    vlm.processor.save_pretrained(folder)
    weights = folder / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"{weights} was not written (a sharded save?): save_published expects one file.")
    state = load_file(weights)
    renamed = {(f"vision_tower.vision_model.{k[len('vision_tower.'):]}"
                if k.startswith("vision_tower.") and not k.startswith("vision_tower.vision_model.") else k): v
               for k, v in state.items()}
    save_file(renamed, weights, metadata={"format": "pt"})
    return folder
