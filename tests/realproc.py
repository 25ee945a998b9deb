"""Tiny random-weight models on the real configs and processor files in ../shared/realproc.

Only weights are random: tokenizer, chat template, image processor, vocabulary, image size,
patch size and token ids are the released model's, so token counts and layouts are real.
"""
import json
import os
import shutil
from pathlib import Path

import pytest

from vtanalysis.models import tiny

ROOT = Path(os.environ.get("VTA_REALPROC", Path(__file__).resolve().parents[2] / "shared" / "realproc"))
SKIP_FILES = {"config.json", "README.md", "SOURCE.md", "LICENSE", "configuration.json",
              "chat_template.2024-08-oibrahi1.json"}


def realproc_dir(name: str) -> Path:
    path = ROOT / name
    if not path.is_dir():
        pytest.skip(f"real processor files not found at {path} (set VTA_REALPROC)")
    return path


def build_realproc_model(name: str, dst: Path) -> Path:
    """Save a scaled-down random model next to copies of the real processor files in `dst`."""
    src = realproc_dir(name)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name not in SKIP_FILES:
            shutil.copy(f, dst / f.name)
    if not (src / "processor_config.json").exists() and (src / "preprocessor_config.json").exists():
        pre = json.loads((src / "preprocessor_config.json").read_text())
        if pre.get("processor_class") == "LlavaNextProcessor":
            (dst / "processor_config.json").write_text(json.dumps(
                {"processor_class": "LlavaNextProcessor", "image_token": "<image>", **tiny.NEXT_PROCESSOR_KWARGS}))
    tiny.from_real_files(src).model.save_pretrained(dst)
    return dst
