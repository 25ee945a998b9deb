"""vtanalysis: record, analyse and prune visual-token attention in vision-language models."""
from .errors import ImageError, LayerError, PromptError, UnsupportedModelError, VTAError
from .collect import AttentionRecord, record_attention
from .models import VLM, Grid, TokenLayout, VLMInputs, load_vlm

__version__ = "0.1.0"
__all__ = ["AttentionRecord", "record_attention", "VLM", "Grid", "TokenLayout", "VLMInputs", "load_vlm",
           "VTAError", "ImageError", "LayerError", "PromptError", "UnsupportedModelError"]
