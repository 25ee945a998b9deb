"""Finds the adapter for a model config (by `config.model_type`)."""
from __future__ import annotations

from ..errors import UnsupportedModelError
from .adapter import Adapter
from .gemma3 import Gemma3Adapter
from .internvl import InternVLAdapter
from .llava import LlavaAdapter
from .llava_next import LlavaNextAdapter
from .llava_onevision import LlavaOnevisionAdapter
from .qwen2_vl import Qwen3VLAdapter, Qwen25VLAdapter, Qwen2VLAdapter

ADAPTERS: list[Adapter] = [LlavaAdapter(), LlavaNextAdapter(), LlavaOnevisionAdapter(), Qwen2VLAdapter(),
                           Qwen25VLAdapter(), Qwen3VLAdapter(), InternVLAdapter(), Gemma3Adapter()]


def supported_families() -> list[str]:
    return [f"{a.family} ({a.model_class})" for a in ADAPTERS]


def adapter_for(config) -> Adapter:
    model_type = getattr(config, "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise UnsupportedModelError(
        f"model_type '{model_type}' is not supported. Supported families: {', '.join(supported_families())}."
    )
