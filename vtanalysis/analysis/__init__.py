"""Analyses of recorded attention against ground truth: `positional_bias`, `inflection`,
`saliency`, `grounding` (SAM-2 + open_clip, imported when used) and attention inside object masks."""
from . import grounding, inflection, positional_bias, saliency
from .mask_attention import attention_in_mask, mask_on_grid

__all__ = ["attention_in_mask", "grounding", "inflection", "mask_on_grid", "positional_bias", "saliency"]
