"""Attention edges between token sets, and the context that blocks them in chosen decoder layers only.

arXiv 2411.18620 (cross-modal information flow in multimodal LLMs) blocks the edges image ->
question, image -> last token and question -> last token in windows of layers, and reads where
the image reaches the answer from the drop of the answer's probability. An edge "A->B" means the
queries of B may not attend to the keys of A (information may not flow from A to B directly).

Token sets, per sample (from its `TokenLayout`, never fixed offsets):

    image     every image token (LLaVA-NeXT newline tokens included)
    question  the prompt tokens after the last image token, except the last one (the question and
              the chat template's tokens around it)
    last      the last prompt token (the one that predicts the first answer token)
    text      every query after the image: the question, the last token and the answer tokens
    all       every token of the prompt and the answer (`ablate(how="mask")` blocks image tokens -> all)

How it runs: only the knocked-out layers are wrapped (`_core.scoped`, for the calling context
only); each gets the mask the model built for it (None = plain causal under SDPA/flash, a boolean
or additive tensor otherwise) with the blocked query/key pairs removed, so the model's own
attention backend runs it (SDPA stays SDPA). Every other layer runs untouched, with no added
operation. A token always keeps attending to itself, so no query is left with no key.
"""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import torch

from .._core.scoped import scoped
from ..errors import VTAError
from ..prune.engine import check_window

SETS = ("image", "question", "last", "text", "all")
EDGES = ("image->question", "image->last", "question->last", "image->text")


@dataclass(frozen=True)
class Edge:
    """Queries of `target` may not attend to keys of `source`.

    Attributes:
        source: a set name from `SETS`, or per sample the image-token columns (a layout's column
            space, e.g. an object's tokens) as LongTensors.
        target: a set name from `SETS`.
    """
    source: object
    target: str

    def __repr__(self) -> str:
        src = self.source if isinstance(self.source, str) else "columns"
        return f"{src}->{self.target}"


def parse_edges(edges, batch) -> list[Edge]:
    """Edge names ("image->last"), `Edge`s, or a list of them, checked against the batch."""
    if not isinstance(edges, (list, tuple)):
        edges = [edges]
    out = []
    for edge in edges:
        if isinstance(edge, str):
            source, _, target = edge.partition("->")
            edge = Edge(source.strip(), target.strip())
        if not isinstance(edge, Edge):
            raise VTAError(f"an edge must be a name like 'image->last' or an Edge, got {type(edge).__name__}.")
        if isinstance(edge.source, str) and edge.source not in SETS or edge.target not in SETS:
            raise VTAError(f"unknown edge {edge!r}: use one of {', '.join(EDGES)}, or any 'A->B' with A and B from "
                           f"{', '.join(SETS)} (A may also be per-sample image-token columns: Edge(columns, 'question')).")
        if not isinstance(edge.source, str):
            if len(edge.source) != len(batch):
                raise VTAError(f"the edge's source columns have {len(edge.source)} entries for a batch of {len(batch)}: "
                               "give one LongTensor of image-token columns per sample.")
            for b, (cols, lay) in enumerate(zip(edge.source, batch.layouts)):
                cols = torch.as_tensor(cols)
                if cols.numel() and (int(cols.min()) < 0 or int(cols.max()) >= lay.n_image_tokens):  # ok-host: input
                    raise VTAError(f"sample {b}: edge source columns must lie in [0, {lay.n_image_tokens}).")
        out.append(edge)
    return out


def check_lengths(vlm, batch, answer_ids: torch.Tensor) -> None:
    """Refuse a prompt + answer longer than a sliding attention window (see `prune.engine.check_window`)."""
    check_window(vlm, batch.model_inputs["input_ids"].shape[1] + answer_ids.shape[1])


def _positions(name_or_columns, lay, prompt_len: int) -> tuple[torch.Tensor, bool]:
    """(prompt positions [prompt_len] bool, whether the answer tokens belong to the set)."""
    at = torch.zeros(prompt_len, dtype=torch.bool)
    if not isinstance(name_or_columns, str):
        at[lay.image_positions[torch.as_tensor(name_or_columns, dtype=torch.long)]] = True
        return at, False
    if name_or_columns == "image":
        at[lay.image_positions] = True
    elif name_or_columns == "question":
        at[lay.text_positions[:-1]] = True
    elif name_or_columns == "last":
        at[lay.text_positions[-1]] = True
    elif name_or_columns == "text":
        at[lay.text_positions] = True
    else:  # all (left padding included: padded rows read nothing anyone uses)
        at[:] = True
    return at, name_or_columns in ("text", "all")


class Knockout:
    """Context manager: inside it, every forward pass of `vlm` runs `layers` with `edges` blocked.

    Args:
        vlm, batch: the model and the prepared batch the passes run on (its layouts name the sets).
        edges: `Edge`s (see `parse_edges`).
        layers: decoder layer indices to knock out in (non-negative).

    The blocked pairs of a pass with q queries over k keys are rows k-q .. k-1 of the full
    [B, k, k] matrix blocked[b, i, j] = OR over edges (query_set[b, i] and key_set[b, j]), i != j.
    """

    def __init__(self, vlm, batch, edges: list[Edge], layers: list[int]):
        self.vlm, self.layers = vlm, sorted(set(layers))
        self.lm = vlm.adapter.language_model(vlm.model)
        self.prompt_len = batch.model_inputs["input_ids"].shape[1]
        dev = vlm.device
        queries, keys, answer = [], [], []
        for edge in edges:
            q = [_positions(edge.target, lay, self.prompt_len) for lay in batch.layouts]
            sources = [edge.source] * len(batch) if isinstance(edge.source, str) else edge.source
            k = [_positions(src, lay, self.prompt_len)[0] for src, lay in zip(sources, batch.layouts)]
            queries.append(torch.stack([a for a, _ in q]).to(dev))
            answer.append(q[0][1])
            keys.append(torch.stack(k).to(dev))
        self.queries, self.keys, self.answer = queries, keys, answer
        self.total = 0

    def __enter__(self):
        self._stack = ExitStack()
        if self.queries and self.layers:  # nothing blocked: nothing attached, the plain forward
            self._stack.enter_context(scoped(self.lm, "pre", self._on_call))
            for l in self.layers:
                self._stack.enter_context(scoped(self.vlm.decoder_layers[l], "pre", self._edit))
        return self

    def __exit__(self, *exc):
        self._stack.close()
        return False

    def _on_call(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        q = (embeds if embeds is not None else kwargs.get("input_ids", args[0] if args else None)).shape[1]
        self.total = q if q > 1 else self.total + 1  # a prefill (or a cache-less step) sees the whole sequence

    def blocked(self, q: int, k: int) -> torch.Tensor:
        """[B, q, k] True where query k-q+i may not attend to key j."""
        extra = k - self.prompt_len
        out = None
        for qs, ks, answer in zip(self.queries, self.keys, self.answer):
            b = qs.shape[0]
            qs = torch.cat([qs, qs.new_full((b, extra), answer)], 1)[:, k - q:]
            ks = torch.cat([ks, ks.new_zeros(b, extra)], 1)
            block = qs[:, :, None] & ks[:, None, :]
            out = block if out is None else out | block
        diagonal = torch.arange(k - q, k, device=out.device)[:, None] == torch.arange(k, device=out.device)[None, :]
        return out & ~diagonal

    def _edit(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        q, k = hidden.shape[1], self.total
        mask = kwargs.get("attention_mask")
        return args, {**kwargs, "attention_mask": without(mask, self.blocked(q, k), hidden.dtype)}


def without(mask, blocked: torch.Tensor, dtype) -> torch.Tensor:
    """A decoder layer's attention mask with the `blocked` [B, q, k] pairs removed.

    mask: None (causal: query k-q+i sees keys <= k-q+i), a boolean [B or 1, 1, q, k] (True =
    attend) or an additive float mask of that shape. Returns a boolean mask for None or boolean
    input (SDPA takes it as is) and an additive one in `dtype` for an additive input.
    """
    b, q, k = blocked.shape
    if mask is not None and mask.shape[-2:] != (q, k):
        raise VTAError(f"a decoder layer got an attention mask of shape {tuple(mask.shape)} for {q} queries over {k} "
                       "keys; knockout supports the dynamic KV cache (the default), not static or sliding caches.")
    if mask is None:
        allowed = torch.ones(q, k, dtype=torch.bool, device=blocked.device).tril(k - q)[None, None]
    elif mask.dtype == torch.bool:
        allowed = mask
    else:
        allowed = mask > torch.finfo(mask.dtype).min / 2
    allowed = allowed.to(blocked.device) & ~blocked[:, None]
    if mask is None or mask.dtype == torch.bool:
        return allowed
    return torch.zeros((), dtype=mask.dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(mask.dtype).min)
