"""Tiny random-weight models on the real configs and processor files in ../shared/realproc.

Only weights are random: tokenizer, chat template, image processor, vocabulary, image size,
patch size and token ids are the released model's, so token counts and layouts are real.
"""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import transformers

from vtanalysis.models.tiny import scale_down_config

ROOT = Path(os.environ.get("VTA_REALPROC", Path(__file__).resolve().parents[2] / "shared" / "realproc"))
SKIP_FILES = {"config.json", "README.md", "SOURCE.md", "LICENSE", "configuration.json",
              "chat_template.2024-08-oibrahi1.json"}


def realproc_dir(name: str) -> Path:
    path = ROOT / name
    if not path.is_dir():
        pytest.skip(f"real processor files not found at {path} (set VTA_REALPROC)")
    return path


def _next_config(src: Path) -> dict:
    """LLaVA-NeXT-Mistral's folder has no config.json: build transformers' LlavaNextConfig for it."""
    pre = json.loads((src / "preprocessor_config.json").read_text())
    added = json.loads((src / "added_tokens.json").read_text())
    text = transformers.MistralConfig(vocab_size=32064, sliding_window=None).to_dict()
    config = transformers.LlavaNextConfig(text_config=text, image_token_id=added["<image>"],
                                          image_grid_pinpoints=pre["image_grid_pinpoints"],
                                          vision_feature_layer=-2, vision_feature_select_strategy="default")
    return config.to_dict()


def build_realproc_model(name: str, dst: Path) -> Path:
    """Write a scaled-down random model + the real processor files into `dst`; return `dst`."""
    src = realproc_dir(name)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name not in SKIP_FILES:
            shutil.copy(f, dst / f.name)
    if (src / "config.json").exists():
        config = json.loads((src / "config.json").read_text())
    else:
        config = _next_config(src)
        (dst / "processor_config.json").write_text(json.dumps({
            "processor_class": "LlavaNextProcessor", "patch_size": 14, "image_token": "<image>",
            "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1}))
    small = scale_down_config(config)
    config_obj = transformers.AutoConfig.for_model(**small)
    torch.manual_seed(0)
    model_cls = getattr(transformers, config_obj.architectures[0] if config_obj.architectures else
                        "LlavaNextForConditionalGeneration")
    model_cls(config_obj).save_pretrained(dst)
    return dst
