"""Model adapters: load a VLM, prepare inputs, and know where every token sits."""
from .adapter import Adapter
from .layout import Grid, TokenLayout
from .registry import adapter_for, supported_families
from .vlm import VLM, VLMInputs
from .loading import load_vlm
from . import demo, tiny  # noqa: E402  (random tiny models and the bundled demo: part of the public API)

__all__ = ["demo", "tiny", "Adapter", "Grid", "TokenLayout", "VLM", "VLMInputs", "adapter_for", "load_vlm", "supported_families"]
