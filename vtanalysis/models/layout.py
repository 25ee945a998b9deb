"""Where each kind of token sits in one sample's sequence, and how image tokens map to patch grids.

A `TokenLayout` is computed by a model adapter from the processor's output and the model config;
nothing in it is a constant. Every record in vtanalysis uses its orders:

* columns of image attention follow `image_positions` (grid by grid, row-major, then any
  newline tokens of LLaVA-NeXT at the end), so `values[grid.columns]` reshapes to `grid.shape`;
* rows follow `text_positions`: every prompt token after the last image token (question and
  assistant suffix), the last of which is the token that predicts the first answer token.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Grid:
    """One 2-D patch grid of an image (LLaVA-1.5: the image; LLaVA-NeXT: base or tiles; Qwen2-VL: a frame).

    Attributes:
        image: index of the image within the sample.
        name: "image", "base", "tiles" or "frame{t}".
        shape: (h, w) in tokens, after any merge (Qwen2-VL 2x2) and unpadding (LLaVA-NeXT).
        start, stop: the columns `image_positions[start:stop]` that this grid covers, row-major.
    """

    image: int
    name: str
    shape: tuple[int, int]
    start: int
    stop: int

    @property
    def columns(self) -> slice:
        return slice(self.start, self.stop)

    def to_map(self, values: torch.Tensor) -> torch.Tensor:
        """Fold per-column values [..., n_image_tokens] back onto this grid: [..., h, w]."""
        return values[..., self.start:self.stop].reshape(*values.shape[:-1], *self.shape)


@dataclass
class TokenLayout:
    """Token layout of one sample in the padded batch.

    Attributes:
        seq_len: length of the padded sequence fed to the model.
        first_position: first non-padding position (> 0 under left padding).
        image_positions: LongTensor [n_image_tokens], positions of image tokens in column order.
        text_positions: LongTensor [n_text], positions of the instruction text queries, in order.
        grids: the 2-D grids, each covering a contiguous run of columns.
        newline_columns: columns of image_positions that hold LLaVA-NeXT newline tokens.
        image_columns: per image, the (start, stop) of its columns.
    """

    seq_len: int
    first_position: int
    image_positions: torch.Tensor
    text_positions: torch.Tensor
    grids: list[Grid]
    newline_columns: list[int] = field(default_factory=list)
    image_columns: list[tuple[int, int]] = field(default_factory=list)

    @property
    def n_image_tokens(self) -> int:
        return int(self.image_positions.numel())

    @property
    def n_text(self) -> int:
        return int(self.text_positions.numel())

    @property
    def last_position(self) -> int:
        """Position of the last prompt token (predicts the first answer token)."""
        return int(self.text_positions[-1])

    @property
    def prefix(self) -> slice:
        """The system prefix: from the first real token to the first image token."""
        return slice(self.first_position, int(self.image_positions.min()))

    def to_dict(self) -> dict:
        return {
            "seq_len": self.seq_len,
            "first_position": self.first_position,
            "image_positions": self.image_positions.tolist(),
            "text_positions": self.text_positions.tolist(),
            "grids": [
                {"image": g.image, "name": g.name, "shape": list(g.shape), "start": g.start, "stop": g.stop}
                for g in self.grids
            ],
            "newline_columns": list(self.newline_columns),
            "image_columns": [list(c) for c in self.image_columns],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "TokenLayout":
        return cls(
            seq_len=d["seq_len"],
            first_position=d["first_position"],
            image_positions=torch.tensor(d["image_positions"], dtype=torch.long),
            text_positions=torch.tensor(d["text_positions"], dtype=torch.long),
            grids=[Grid(g["image"], g["name"], tuple(g["shape"]), g["start"], g["stop"]) for g in d["grids"]],
            newline_columns=list(d["newline_columns"]),
            image_columns=[tuple(c) for c in d["image_columns"]],
        )


def text_after_images(input_ids: torch.Tensor, attention_mask: torch.Tensor, image_token_id: int):
    """Split one padded row into (first real position, image-token positions, text positions).

    Text positions are every real token after the last image token.
    Args: input_ids [seq], attention_mask [seq].
    """
    real = attention_mask.bool()
    first = int(real.nonzero()[0])
    image_pos = (input_ids == image_token_id).nonzero().flatten()
    last_real = int(real.nonzero()[-1])
    text_pos = torch.arange(int(image_pos[-1]) + 1, last_real + 1)
    return first, image_pos, text_pos
