"""What pre-LLM methods read on the vision side, mapped onto token-layout columns.

At the encoder layer whose output feeds the projector (`Adapter.vision_feature_layer`; -2 for
LLaVA, i.e. 0-based layer L_v - 2), `VisionCapture` records per vision input (one image, or one
LLaVA-NeXT tile) the [CLS] query's softmax attention over the patch tokens, head-mean (FasterVLM,
AdaFV; VisionZip's head-sum ranks identically), and the head-mean keys of the patch tokens
(VisionZip's similarity metric). `to_columns` arranges such per-patch values in layout-column order
through the family's `Adapter.pack_vision` (LLaVA-NeXT: the model's own `pack_image_features`, so
tiles, unpadding and newline tokens follow the model exactly); newline columns get NaN. What
differs between families (feature layer, encoder layers, crop counts) is asked of the adapter.
"""
from __future__ import annotations

from contextlib import ExitStack

import torch

from ..collect.tap import tap_attention
from ..errors import UnsupportedModelError
from .._core.scoped import scoped


def vision_refusal(vlm, needs) -> str | None:
    """Why a method reading `needs` cannot run on this model's vision tower, or None. "cls" (a [CLS]
    saliency) is met by a [CLS] token, or where the family allows it by the attention each patch
    receives (`Adapter.received_saliency`); "cls_token" (the token itself, or the CLIP it came from:
    VisionZip, CDPruner) only by a [CLS] token."""
    adapter = vlm.adapter
    if "cls" not in needs or adapter.has_cls or (adapter.received_saliency and "cls_token" not in needs):
        return None
    return f"{adapter.family} {adapter.no_cls_reason}"


def require_cls(vlm, method: str, needs=("cls", "cls_token")) -> None:
    reason = vision_refusal(vlm, needs)
    if reason is not None:
        raise UnsupportedModelError(
            f"method '{method}' needs the vision tower's [CLS] attention, but {reason}; use a method that does "
            "not (e.g. 'adafv-t2i', 'fastv', 'adaptprune').")


class VisionCapture:
    """Context manager recording [CLS] saliency and patch keys during the vision tower's forward.

    Attributes (after the vision tower ran, first call only):
        saliency: [V, N] float32, V vision inputs (images or tiles), N patch tokens: head-mean
            softmax(q_cls . k_j * scale) over j in patches (the [CLS] column itself excluded).
        keys: [V, N, d] float32 head-mean keys of the patch tokens.
        cls_features: [V, Dv] the [CLS] token's hidden state at the output of that layer (what the
            projector would read for it; VisionZip feeds it to the LLM).
        features: [V, N, Dv] the patch tokens' hidden states there (the projector's input; SCOPE's
            similarity).
    """

    def __init__(self, vlm):
        self.vlm = vlm
        self.received = not vlm.adapter.has_cls  # no [CLS]: the attention each patch receives (see `_record`)
        self.layer = vlm.adapter.vision_encoder_layers(vlm.model)[vlm.adapter.vision_feature_layer(vlm.config)]
        self.attn = self.layer.self_attn
        self.saliency = self.keys = self.cls_features = self.features = None
        self._columns = self._features = None

    def columns(self, batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per sample (saliency [n_image_tokens], keys [n_image_tokens, d]) on the model's device, in
        layout-column order (NaN at newline columns); arranged once per run, shared by the engine and
        VisionZip."""
        if self._columns is None:
            sal = to_columns(self.vlm, batch, self.saliency[..., None])
            keys = to_columns(self.vlm, batch, self.keys)
            self._columns = [(a[:, 0], k) for a, k in zip(sal, keys)]
        return self._columns

    def feature_columns(self, batch) -> list[torch.Tensor]:
        """Per sample [n_image_tokens, Dv] patch features in layout-column order (NaN at newlines)."""
        if self._features is None:
            self._features = to_columns(self.vlm, batch, self.features)
        return self._features

    def _record(self, module, query, key, attention_mask, scaling):
        if self.saliency is not None:
            return
        if self.received:
            self.saliency, self.keys = received_attention(query, key, attention_mask, scaling), key.float().mean(1)
            return
        q = query[:, :, :1].float()  # the [CLS] query, [V, H, 1, d]; the encoder is not causal
        logits = (q @ key.float().transpose(-1, -2)) * scaling
        if attention_mask is not None:
            logits = logits + attention_mask[..., :1, :].float()
        probs = torch.softmax(logits, dim=-1)[:, :, 0]  # [V, H, 1 + N]
        self.saliency = probs[:, :, 1:].mean(1)
        self.keys = key[:, :, 1:].float().mean(1)

    def _record_cls(self, module, args, output):
        if self.cls_features is None:
            hidden = output[0] if isinstance(output, tuple) else output
            if self.received:  # every token is a patch
                self.features = hidden
                return
            self.cls_features, self.features = hidden[:, 0], hidden[:, 1:]

    def __enter__(self):
        self._stack = ExitStack()
        self._stack.enter_context(tap_attention({self.attn: self._record}))
        self._stack.enter_context(scoped(self.layer, "post", self._record_cls))
        return self

    def __exit__(self, *exc):
        self._stack.close()
        return False


def received_attention(query, key, attention_mask, scaling, chunk: int = 1024) -> torch.Tensor:
    """[V, N] float32: the attention each patch j receives, mean over the queries i and the heads h of
    softmax_j(q_i . k_j * scaling + M_ij) (VisPruner's rule for SigLIP towers, which have no [CLS]:
    `attentions[-1].mean(dim=-2)`, then the head mean). query, key [V, H, N, d]; queries in chunks so
    no more than a chunk x N map is held per input."""
    total = torch.zeros(key.shape[0], key.shape[1], key.shape[2], device=key.device)
    k = key.float().transpose(-1, -2)
    for start in range(0, query.shape[2], chunk):
        logits = (query[:, :, start:start + chunk].float() @ k) * scaling
        if attention_mask is not None:
            logits = logits + attention_mask[..., start:start + chunk, :].float()
        total += torch.softmax(logits, dim=-1).sum(2)
    return (total / query.shape[2]).mean(1)


def to_columns(vlm, batch, per_input: torch.Tensor) -> list[torch.Tensor]:
    """Arrange per-patch values [V, N, D] as per-sample [n_image_tokens, D] in layout-column order.

    V runs over the batch's images in order (LLaVA-NeXT: each image's tiles, base first), packed per
    image by the family (`Adapter.pack_vision`). Newline columns (LLaVA-NeXT) are NaN.
    """
    per_input = per_input.float()
    packed = vlm.adapter.pack_vision(vlm, batch, per_input)
    out, image = [], 0
    for lay, n_images in zip(batch.layouts, batch.images_per_sample or [1] * len(batch)):
        cols = torch.empty(lay.n_image_tokens, per_input.shape[-1], device=per_input.device)
        for start, stop in lay.image_columns[:n_images]:
            # packed values are in sequence order; layout columns may order them differently (NeXT)
            seq_rank = torch.argsort(lay.image_positions[start:stop]).to(per_input.device)
            cols[start + seq_rank] = packed[image].to(cols.dtype)
            image += 1
        out.append(cols)
    return out


def projector_rows(vlm, batch, n_patches: int, n_inputs: int) -> list[torch.Tensor]:
    """Per sample, LongTensor [n_image_tokens]: the projector-input row (input * N + patch) behind
    each layout column, -1 for newline columns."""
    index = torch.arange(n_inputs * n_patches, dtype=torch.float32).view(n_inputs, n_patches, 1)  # exact below 2**24
    return [torch.nan_to_num(c[:, 0], nan=-1).long() for c in to_columns(vlm, batch, index)]


def crop_columns(vlm, batch) -> list[list[torch.Tensor]]:
    """Per sample, per crop (a vision input: an image, or a LLaVA-NeXT base image or tile, in the
    order the tower sees them): LongTensor of the layout columns of its patch tokens, ascending, on
    the CPU (newline columns belong to no crop). Families whose crops have no fixed size
    (`Adapter.crop_patches` is None: Qwen2-VL, Gemma 3, ...) have one crop per image. Built on the
    host from the layouts and the processor's sizes."""
    n_patches = vlm.adapter.crop_patches(vlm)
    if n_patches is None:
        return [[torch.arange(a, b)[~torch.isin(torch.arange(a, b), torch.tensor(list(lay.newline_columns), dtype=torch.long))]
                 for a, b in lay.image_columns or [(0, lay.n_image_tokens)]] for lay in batch.layouts]
    out = []
    for rows in projector_rows(vlm, batch, n_patches, vlm.adapter.vision_crops(vlm, batch)):  # CPU: no device involved
        crop = torch.where(rows >= 0, rows // n_patches, -1)
        out.append([(crop == v).nonzero().flatten() for v in crop[crop >= 0].unique().tolist()])  # ok-host: CPU layout, before the run
    return out


def full_crop_tokens(vlm, crops: list[torch.Tensor]) -> list[int]:
    """Tokens of each crop before any unpadding: the tower's patch count (LLaVA), or the crop's own
    token count where crops have no fixed size (Qwen2-VL's dynamic resolution)."""
    n_patches = vlm.adapter.crop_patches(vlm)
    return [n_patches] * len(crops) if n_patches is not None else [len(c) for c in crops]
