"""`record_attention`: per-layer text->image and text->text attention rows from one real prefill.

For each recorded layer l and sample b the record holds
    text_to_image[l][t, n] = A_l[text_positions[t], image_positions[n]]
    text_to_text[l][t, u]  = A_l[text_positions[t], text_positions[u]]
where A_l is the causal softmax attention of layer l (head-mean by default: mean_h A_l,h).
Rows are computed from the model's own post-RoPE queries and keys (see `collect.tap`), so they
equal eager attention rows; the model itself keeps running its default backend (SDPA).
"""
from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .._core.devices import Copies
from ..errors import VTAError
from .._core.files import atomic_write
from ..models.layout import TokenLayout
from .._core.scoped import scoped
from .rows import attention_rows, causal_blocked, pad_rows
from .tap import tap_attention


@dataclass
class SampleAttention:
    """One sample's attention rows.

    Attributes:
        text_to_image: [n_layers, n_text, n_image] (heads="mean") or [n_layers, H, n_text, n_image].
        text_to_text: [n_layers, n_text, n_text] (or with a head dimension, as above).
        layout: the sample's `TokenLayout` (row and column orders).
        layers: the model layer index of each recorded layer.
    """

    text_to_image: torch.Tensor
    text_to_text: torch.Tensor
    layout: TokenLayout
    layers: list[int]

    @property
    def last_row(self) -> torch.Tensor:
        """Attention of the last prompt token over image tokens: [n_layers, (H,) n_image]."""
        return self.text_to_image[..., -1, :]

    def layer(self, model_layer: int) -> int:
        """Index into the record's layer dimension of a model layer index."""
        if model_layer not in self.layers:
            raise VTAError(f"layer {model_layer} was not recorded; recorded layers: {self.layers}.")
        return self.layers.index(model_layer)


class AttentionRecord:
    """Attention rows of a batch: `record[b]` is sample b's `SampleAttention`."""

    def __init__(self, samples: list[SampleAttention], layers: list[int], heads: str, meta: dict | None = None):
        self.samples, self.layers, self.heads, self.meta = samples, layers, heads, meta or {}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, b: int) -> SampleAttention:
        return self.samples[b]

    def __iter__(self):
        return iter(self.samples)

    def save(self, path: str | Path) -> None:
        """Write `<path>.safetensors` (tensors) and `<path>.json` (layouts, layers, meta), each atomically."""
        path = Path(path)
        tensors = {}
        for b, s in enumerate(self.samples):
            tensors[f"{b}.text_to_image"] = s.text_to_image.contiguous()
            tensors[f"{b}.text_to_text"] = s.text_to_text.contiguous()
        info = {"layers": self.layers, "heads": self.heads, "meta": self.meta,
                "layouts": [s.layout.to_dict() for s in self.samples]}
        atomic_write(path.with_suffix(".safetensors"), lambda p: save_file(tensors, str(p)))
        atomic_write(path.with_suffix(".json"), lambda p: Path(p).write_text(json.dumps(info)))

    @classmethod
    def load(cls, path: str | Path) -> "AttentionRecord":
        path = Path(path)
        tensors = load_file(str(path.with_suffix(".safetensors")))
        info = json.loads(path.with_suffix(".json").read_text())
        samples = [
            SampleAttention(tensors[f"{b}.text_to_image"], tensors[f"{b}.text_to_text"], TokenLayout.from_dict(lay),
                            info["layers"])
            for b, lay in enumerate(info["layouts"])
        ]
        return cls(samples, info["layers"], info["heads"], info["meta"])


def record_attention(vlm, batch, layers="all", heads: str = "mean") -> AttentionRecord:
    """Run one prefill forward pass of `vlm` on `batch` and record attention rows.

    Args:
        vlm: a `VLM`.
        batch: `VLMInputs` from `vlm.prepare`.
        layers: "all" or an iterable of decoder-layer indices (negative counts from the end).
        heads: "mean" (average the per-head softmax rows) or "all" (keep a head dimension).
    Returns:
        `AttentionRecord`; `record[b].text_to_image[l]` is [n_text, n_image] for head-mean.
    Raises:
        LayerError: a layer index outside the model's depth.
    """
    if heads not in ("mean", "all"):
        raise VTAError(f"heads must be 'mean' or 'all', not {heads!r}.")
    if isinstance(layers, int):
        layers = [layers]
    wanted = list(range(vlm.num_layers)) if layers == "all" else sorted({vlm.check_layer(l) for l in layers})
    if not wanted:
        raise VTAError(f"layers is empty: pass 'all' or at least one decoder-layer index (0..{vlm.num_layers - 1}, "
                       "or -1 for the last).")
    device = vlm.device
    # built once on the input device; layers on other devices (device_map) get a copy each
    rows = Copies(pad_rows([lay.text_positions for lay in batch.layouts]).to(device))
    cols = Copies(pad_rows([torch.cat([lay.image_positions, lay.text_positions]) for lay in batch.layouts]).to(device))
    per_layer: dict[int, torch.Tensor] = {}  # layer -> [B, 1 or H, R, C], kept on the model's device
    blocked = {}  # (Lq, Lk, device) -> the causal mask of the rows, built once for all layers

    def make_callback(layer_idx):
        def callback(module, query, key, attention_mask, scaling):
            where = query.device
            row_idx, col_idx = rows.on(where), cols.on(where)
            shape = (query.shape[2], key.shape[2], where)
            if attention_mask is None and shape not in blocked:
                blocked[shape] = causal_blocked(row_idx, *shape[:2])
            probs = attention_rows(query, key, attention_mask, scaling, row_idx, blocked=blocked.get(shape))
            if heads == "mean":
                probs = probs.mean(dim=1, keepdim=True)
            index = col_idx[:, None, None, :].expand(*probs.shape[:3], col_idx.shape[1])
            per_layer[layer_idx] = probs.gather(3, index).to(device)
        return callback

    decoder = vlm.decoder_layers
    callbacks = {decoder[l].self_attn: make_callback(l) for l in wanted}
    inputs = batch.to(device).model_inputs
    with ExitStack() as stack, torch.inference_mode():
        stack.enter_context(tap_attention(callbacks))
        if wanted[-1] < vlm.num_layers - 1:  # the last wanted layer ends the pass; later layers are not needed
            stack.enter_context(scoped(decoder[wanted[-1]], "post", _stop))
        try:
            vlm.model(**inputs, use_cache=False, logits_to_keep=1)
        except _Stop:
            pass
        stacked = to_host(torch.stack([per_layer[l] for l in wanted], dim=1))  # [B, L, 1 or H, R, C]

    samples = []
    for b, lay in enumerate(batch.layouts):
        one = stacked[b, :, 0] if heads == "mean" else stacked[b]
        one = one[..., : lay.n_text, : lay.n_image_tokens + lay.n_text]
        samples.append(SampleAttention(one[..., : lay.n_image_tokens].contiguous(),
                                       one[..., lay.n_image_tokens:].contiguous(), lay, wanted))
    meta = {"model": vlm.name, "prompts": list(batch.prompts)}
    return AttentionRecord(samples, wanted, heads, meta)


def to_host(x: torch.Tensor) -> torch.Tensor:
    """One device-to-host transfer: into pinned memory, non-blocking, then one wait (CUDA; CPU: as
    is; other devices: a plain copy)."""
    if x.device.type != "cuda":
        return x.cpu()  # ok-host: the record's one transfer, after the forward pass
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    host.copy_(x, non_blocking=True)
    torch.cuda.current_stream(x.device).synchronize()
    return host


class _Stop(Exception):
    pass


def _stop(*_):
    """Forward hook that ends the pass after a layer, so layers past the last recorded one never run."""
    raise _Stop
