"""Where one image's tokens sit in the sequence vLLM builds, and which crop each comes from.

A `Packing` describes the N embeddings of one image in prompt order: per row, the crop it comes
from (an image; on LLaVA-NeXT the base image, then each tile) and the patch within that crop, or a
newline token. LLaVA-NeXT's is read off vLLM's own packing function run on index codes instead of
features, so it follows the model exactly (base grid, then the unpadded tile grid row by row, each
row closed by a newline). Built on the host from sizes: no device work.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass
class Packing:
    """codes: LongTensor [N]: crop * n_patches + patch for a patch token, -1 for a newline token.
    n_patches: patches per crop (the tower's grid, side x side)."""

    codes: torch.Tensor
    n_patches: int
    side: int

    @classmethod
    def single(cls, side: int) -> "Packing":
        """LLaVA-1.5: one crop, its patches in row-major order."""
        return cls(torch.arange(side * side), side * side, side)

    @cached_property
    def newlines(self) -> torch.Tensor:
        """Rows of the newline tokens, ascending."""
        return (self.codes < 0).nonzero().flatten()  # ok-host: CPU codes, before the pass

    @cached_property
    def crops(self) -> list[torch.Tensor]:
        """Per crop present (ascending), the rows of its patches, ascending."""
        crop = torch.where(self.codes >= 0, self.codes // self.n_patches, -1)
        return [(crop == c).nonzero().flatten() for c in crop[crop >= 0].unique().tolist()]  # ok-host: CPU codes

    @property
    def grids(self) -> list[tuple[torch.Tensor, int, int]]:
        """(rows in row-major grid order, h, w) per grid: the base image, then (LLaVA-NeXT) the
        unpadded tile grid without its newlines, one row of it per newline."""
        base = torch.arange(self.n_patches)
        rest = torch.arange(self.n_patches, len(self.codes))
        rest = rest[self.codes[rest] >= 0]
        h = len(self.newlines)
        if not len(rest) or not h:
            return [(base, self.side, self.side)]
        return [(base, self.side, self.side), (rest, h, len(rest) // h)]
