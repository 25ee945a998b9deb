"""Figures: `attention_maps` (per-layer heatmaps, positional-bias grids) and `overlay` (kept tokens
drawn on the image). The library never chooses a matplotlib backend."""
from . import attention_maps, overlay

__all__ = ["attention_maps", "overlay"]
