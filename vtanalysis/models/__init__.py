"""Model adapters: load a VLM, prepare inputs, and know where every token sits."""
from .adapter import Adapter
from .layout import Grid, TokenLayout
from .registry import adapter_for, supported_families
from .vlm import VLM, VLMInputs, load_vlm

__all__ = ["Adapter", "Grid", "TokenLayout", "VLM", "VLMInputs", "adapter_for", "load_vlm", "supported_families"]
