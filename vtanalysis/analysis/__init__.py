"""Analyses of recorded attention against ground truth."""
from .mask_attention import attention_in_mask, mask_on_grid

__all__ = ["attention_in_mask", "mask_on_grid"]
