"""Running in-LLM visual-token pruning inside real inference (prefill and generation).

A method prunes in stages. Stage s starts at decoder layer K_s: layers < K_1 see every token,
layers K_s .. K_{s+1}-1 see the tokens stage s kept. Scores come from layer K_s - 1 during the
prefill (its post-RoPE queries and keys, through `collect.tap_attention`), and optional keys from
the hidden states entering layer K_s. The selection is made once, at prefill; decoding steps
(with or without the KV cache) see the same kept set, as in the official FastV code.

How it attaches: the `forward` of every decoder layer from K_1 on is wrapped for the duration of
a `with Pruner(...)` block, in the calling context only (`vtanalysis._core.scoped`: threads sharing the
model each see their own run, or none). The wrapper (1) at K_s gathers the hidden states to the kept tokens,
(2) passes its own attention mask, built once per stage (causal by original order, padding and
filler tokens masked; in the prefill of Gemma 3 also every kept token of an image to every other of
that image, as the model's own mask; None when there is neither padding nor fillers nor such
images and the backend is SDPA or flash, so their causal kernels run), and (3) passes rotary
embeddings (per layer type where types have their own: Gemma 3's sliding and full layers) for either
the ORIGINAL positions of the kept tokens (FastV/AdaptPrune convention) or RENUMBERED ones (each
token's position minus the number of tokens dropped before it: AdaptInfer/SparseVLM convention). Layers >= K_s cache only the kept
tokens' keys and values, so the KV cache stays consistent during generation.

Methods that act before the LLM (FasterVLM, AdaFV, VisionZip) are a stage at layer 0: they
choose from the embeddings entering layer 0 (exactly the LLM's input embeddings) and the vision
tower's [CLS] attention, and every decoder layer sees only the kept tokens; with renumbered
positions this is the shortened input sequence the authors' code builds.

Samples of a batch may keep different numbers of tokens (different image sizes); the shorter
ones are padded with dropped tokens that every query masks out ("fillers").
"""
from __future__ import annotations

import inspect
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch

from ..collect.rows import attention_rows, pad_rows
from ..collect.tap import tap_attention
from .._core.devices import Copies, execution_device, to_device
from ..errors import VTAError
from .._core.scoped import scoped


@dataclass
class StageInputs:
    """What a method's chooser sees for one sample at one stage. Every tensor is on the model's
    device (`VLM.device`, the input embeddings' device when layers sit on several), and a chooser
    returns its indices there too: nothing crosses to the host mid-prefill.

    In-LLM stages (layer K >= 1) get the attention fields; a pre-LLM stage (layer 0) gets the
    embedding and vision fields instead; the rest are None.

    Attributes:
        sample: the sample's index in the batch.
        columns: [n] layout columns of the current image tokens.
        grids: [(start, h, w)] in current-image index space, or None once a stage has broken the grids.
        newline: [n] bool, True for LLaVA-NeXT newline tokens.
        newline_index, patch_index: indices of the newline and of the other tokens, ascending
            (known without a device round trip at the first stage; see `split_newlines`).
        positions: [n] sequence positions of the current image tokens (pre-LLM stages).
        crops, crop_keep: pre-LLM stages: per crop (an image, or a LLaVA-NeXT base image or tile),
            the indices of its patch tokens (ascending) and how many of them to keep; the stage keeps
            sum(crop_keep) + the newline tokens.
        last_row: [n] head-mean attention of the last prompt token over the current image tokens (layer K-1).
        prev_keys: [n + T, H x d] layer K-1's keys after RoPE of the current image tokens, then of the
            text tokens after the image (methods needing "prev_keys").
        normed_hidden: [n + T, D] the states entering layer K through the model's final norm, same rows.
        question: the sample's question as given to `VLM.prepare` (pre-LLM stages; None for prompts).
        text_to_text: [H, T, T] per-head attention among the text queries (layer K-1).
        text_to_image: [H, T, n] per-head attention of text queries over current image tokens.
        image_to_image: [H, n, n] per-head attention among the image tokens (methods needing "image_rows").
        keys: [n, D]: k_proj of layer K on the hidden states entering it (no norm, no RoPE).
        text_embeds: [T, D] LLM input embeddings of the text after the image(s) (pre-LLM stages, and
            in-LLM stages of methods needing "embeds": SparseVLM's raters).
        image_embeds: [N, D] LLM input embeddings of all the sample's image tokens as they entered
            layer 0 (projected features; at a pre-LLM stage these are the current tokens).
        saliency: [n] vision [CLS] attention (NaN at newline tokens).
        vision_keys: [n, d] head-mean vision keys at the feature layer (NaN at newline tokens).
        vision_features: [n, Dv] the patch tokens' vision hidden states at the feature layer, the
            projector's input (methods needing "vision_features"; NaN at newline tokens).
    """

    columns: torch.Tensor
    grids: list | None
    newline: torch.Tensor
    sample: int = 0
    newline_index: torch.Tensor | None = None
    patch_index: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    crops: list | None = None
    crop_keep: list | None = None
    last_row: torch.Tensor | None = None
    text_to_text: torch.Tensor | None = None
    text_to_image: torch.Tensor | None = None
    image_to_image: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    saliency: torch.Tensor | None = None
    vision_keys: torch.Tensor | None = None
    vision_features: torch.Tensor | None = None
    prev_keys: torch.Tensor | None = None
    normed_hidden: torch.Tensor | None = None
    question: str | None = None


ROW_NEEDS = ("last_row", "text_rows", "image_rows")  # choosers that read layer K-1's attention rows


def split_newlines(inputs: StageInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(newline indices, other indices) of the current image tokens, ascending."""
    if inputs.newline_index is not None:
        return inputs.newline_index, inputs.patch_index
    return inputs.newline.nonzero().flatten(), (~inputs.newline).nonzero().flatten()


@dataclass
class Stage:
    """One pruning stage: layers >= `layer` see `keep(n_current)` image tokens chosen by `choose`."""

    layer: int
    keep: object  # callable: the sample's index in the batch -> image tokens this stage keeps
    per_crop: list = field(default_factory=list)  # pre-LLM stages: per sample, tokens kept of each crop
    # filled at prefill (device tensors; the counts are host integers known from the plan):
    sel: torch.Tensor | None = None      # [B, Ls] indices into the previous stage's sequence
    pos: torch.Tensor | None = None      # [B, Ls] indices into the full (unpruned) sequence
    valid: torch.Tensor | None = None    # [B, Ls] False for fillers
    image: list = field(default_factory=list)    # per sample: indices (into this stage's seq) of image tokens
    columns: list = field(default_factory=list)  # per sample: layout columns of those tokens
    kept_counts: list = field(default_factory=list)
    real: list = field(default_factory=list)     # per sample: tokens of this stage's sequence that are not fillers
    fillers: bool = False                        # some sample is padded with fillers
    dropped: torch.Tensor | None = None          # [B] prompt tokens dropped up to this stage


# attention backends that run causal attention from attention_mask=None (the fast SDPA/flash kernels)
CAUSAL_WITHOUT_MASK = ("sdpa", "flash_attention_2", "flash_attention_3")


class Pruner:
    """Context manager that applies pruning stages to `vlm` for every forward pass inside it.

    Args:
        vlm: a `VLM`.
        batch: its `VLMInputs`.
        stages: `Stage`s with increasing `layer` (>= 1).
        choose: callable(StageInputs, keep: int, stage_index: int) -> LongTensor [keep] of indices
            into the current image tokens, on the model's device.
        positions: "original" (kept tokens keep their RoPE positions) or "renumber".
        needs: what the chooser reads besides attention rows: "keys" (k_proj at each stage's layer,
            AdaptPrune), "image_rows" (image-to-image attention, FitPrune), "own_rows" (rows from
            layer K's own q/k on the states entering it, not layer K-1's: PyramidDrop), "cls" (vision [CLS]
            attention, or the attention each patch receives where the family allows it; the caller runs a
            `vision.VisionCapture` passed as `vision`), "cls_token" (the [CLS] token itself, or the CLIP
            it came from: never substituted), "embeds" (the LLM input
            embeddings of text and image tokens, also at in-LLM stages: SparseVLM), "prev_keys" (layer
            K-1's keys after RoPE, heads concatenated: DART's pivots), "normed_hidden" (the states
            entering layer K through the model's final norm: DART's similarity). Attention rows are
            computed only for choosers that read them ("last_row", "text_rows", "image_rows").
        vision: the `VisionCapture` of this run, for a pre-LLM stage needing "cls".
        pre: the method acts before the LLM: one stage at layer 0 choosing from input embeddings.
        crops: pre-LLM stages with per-crop budgets (`Stage.per_crop`): per sample, per crop, its
            patch columns (`vision.crop_columns`).
        select_only: raise `Selected` once the last stage has chosen, before that layer runs: the
            caller wants the selection (`prune.select`), and no later layer can change it.
        ordered: (pre-LLM only) the chooser's indices, in the order returned and repeats included,
            make up each image's part of the shortened sequence (VisionZip's [CLS, dominant,
            contextual] order; AdaFV's duplicated tokens with dedupe=False). Otherwise the kept
            tokens keep their sequence order and a chooser must not repeat one.

    Speed: everything a stage's layers need (gathered states, position ids, rotary tables, mask)
    is built once when the stage starts and reused by its layers (a model split over devices: one
    copy per device, `vtanalysis._core.devices.Copies`). A stage with no padding and no
    fillers passes attention_mask=None under SDPA/flash, so the causal fast kernels run. The
    selection stays on the device; host-side counts come from the plan, not from the device.
    """

    def __init__(self, vlm, batch, stages: list[Stage], choose, *, positions: str = "original",
                 needs: tuple[str, ...] = (), vision=None, pre: bool = False, ordered: bool = False,
                 crops: list | None = None, select_only: bool = False):
        if positions not in ("original", "renumber"):
            raise VTAError(f"positions must be 'original' or 'renumber', not {positions!r}.")
        if positions == "renumber" and vlm.adapter.mrope:
            raise VTAError("positions='renumber' is not defined for Qwen2-VL's M-RoPE (positions encode the image "
                           "grid); use positions='original'.")
        layers = [vlm.check_layer(st.layer, "pruning layer") for st in stages]
        if pre and layers not in ([0], []):
            raise VTAError(f"a pre-LLM method prunes once, at layer 0, got stages at {layers}.")
        if not pre and (any(l < 1 for l in layers) or layers != sorted(set(layers))):
            raise VTAError(f"pruning layers must be increasing and >= 1 (scores come from the layer before), "
                           f"got {layers}; this model has {vlm.num_layers} decoder layers.")
        if ordered and not pre:
            raise VTAError("ordered selections are for pre-LLM methods (one stage at layer 0).")
        self.vlm, self.batch, self.stages, self.choose, self.ordered = vlm, batch, stages, choose, ordered
        self.select_only = select_only
        self.positions, self.needs, self.vision = positions, needs, vision
        self.lm = vlm.adapter.language_model(vlm.model)
        self.layers = vlm.decoder_layers
        self.device = vlm.device  # where the engine builds and selects; each layer gets copies on its own device
        self.layer_device = [execution_device(layer) for layer in self.layers]
        self.prompt_len = batch.model_inputs["input_ids"].shape[1]
        self.padded = any(lay.first_position > 0 for lay in batch.layouts)  # left padding, known on the host
        self.mask_free = self.lm.config._attn_implementation in CAUSAL_WITHOUT_MASK
        self.stage_of = [max([i for i, st in enumerate(stages) if st.layer <= l], default=-1)
                         for l in range(len(self.layers))]
        # layers of different types (Gemma 3: sliding / full) get their own rotary tables
        self.layer_type = list(getattr(self.lm.config, "layer_types", None) or [None] * len(self.layers))
        self._typed_rotary = "layer_type" in inspect.signature(self.lm.rotary_emb.forward).parameters
        # per-sample layout tensors, moved to the device once
        dev = self.device
        blocks = vlm.adapter.attention_blocks(batch.model_inputs)  # [B, L]: images attended both ways (Gemma 3)
        self.blocks = None if blocks is None else blocks.to(dev)
        self.first = torch.tensor([lay.first_position for lay in batch.layouts], device=dev)  # once per run
        self.image_pos = [lay.image_positions.to(dev) for lay in batch.layouts]
        self.text_pos = [lay.text_positions.to(dev) for lay in batch.layouts]
        self.newline_col, self.newline_idx, self.patch_idx = [], [], []
        for lay in batch.layouts:
            is_newline = torch.zeros(lay.n_image_tokens, dtype=torch.bool)
            is_newline[list(lay.newline_columns)] = True
            self.newline_col.append(is_newline.to(dev))
            self.newline_idx.append(is_newline.nonzero().flatten().to(dev))
            self.patch_idx.append((~is_newline).nonzero().flatten().to(dev))
        self.crops = [[c.to(dev) for c in sample] for sample in crops or []]
        if vlm.adapter.deepstack:  # per sample, per column: its row in the DeepStack features (sequence order)
            offsets = [0]
            for lay in batch.layouts:
                offsets.append(offsets[-1] + lay.n_image_tokens)
            self.deepstack_row = [(o + torch.argsort(torch.argsort(lay.image_positions))).to(dev)
                                  for o, lay in zip(offsets, batch.layouts)]
        self._deepstack = None  # this call's DeepStack features of layers the engine adds them after
        if ordered:  # host-known layout for `_build_ordered`: the non-image positions, each column's block start
            self.other_pos, self.block_start = [], []
            for lay in batch.layouts:
                is_image = torch.zeros(self.prompt_len, dtype=torch.bool)
                is_image[lay.image_positions] = True
                self.other_pos.append((~is_image).nonzero().flatten().to(dev))
                start = torch.empty(lay.n_image_tokens, dtype=torch.long)
                for a, b in lay.image_columns or [(0, lay.n_image_tokens)]:
                    start[a:b] = lay.image_positions[a:b].min()
                self.block_start.append(start.to(dev))
        self.q_len = self.total_len = 0
        self._lm_mask = None  # the language model call's 2-D padding mask, if it got one
        self._rows = {}
        self._text_idx = {}
        self._per_call = {}  # (stage, purpose) -> tensors reused by every layer of a stage in one call
        self._input_embeds = None  # [B, L, D] the embeddings entering layer 0, for "embeds" at in-LLM stages

    # -- context --------------------------------------------------------------------------------
    def __enter__(self):
        # every attachment is scoped to the calling context: other threads' passes never see it
        self._stack = ExitStack()
        first = self.stages[0].layer if self.stages else len(self.layers)
        for l in range(first, len(self.layers)):
            self._stack.enter_context(scoped(self.layers[l], "around", self._wrap(l)))
        self._stack.enter_context(scoped(self.lm, "pre", self._on_call))
        if self.vlm.adapter.deepstack:
            self._stack.enter_context(scoped(self.lm, "around", self._split_deepstack))
        if "embeds" in self.needs and self.stages and self.stages[0].layer > 0:
            self._stack.enter_context(scoped(self.layers[0], "pre", self._on_input_embeds))
        own = "own_rows" in self.needs  # scores from layer K's own q/k instead (PyramidDrop)
        tapped = not own and any(n in self.needs for n in (*ROW_NEEDS, "prev_keys"))
        self._stack.enter_context(tap_attention({self.layers[st.layer - 1].self_attn: self._tap(i)
                                                 for i, st in enumerate(self.stages) if st.layer > 0 and tapped}))
        return self

    def __exit__(self, *exc):
        self._stack.close()
        return False

    def _on_input_embeds(self, module, args, kwargs):
        """Keep the embeddings entering layer 0 (prefill, once; a reference: the gathers run at the
        stage, so layer 0 dispatches what the unpruned layer does)."""
        if self._input_embeds is None and not self.decoding:
            self._input_embeds = args[0] if args else kwargs["hidden_states"]

    def _on_call(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.q_len = (embeds if embeds is not None else ids).shape[1]
        mask = kwargs.get("attention_mask")
        self._lm_mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        if self.q_len > 1:
            self.total_len = self.q_len
        else:
            self.total_len += 1
        self._per_call = {}

    def _split_deepstack(self, forward, *args, **kwargs):
        """Qwen3-VL: the language model adds DeepStack features after layers 0 .. n-1 at the full sequence's
        image positions; it keeps those before the first stage, the engine adds the rest to the kept
        image tokens (`_add_deepstack`)."""
        features = kwargs.get("deepstack_visual_embeds")
        first = self.stages[0].layer if self.stages else len(self.layers)
        self._deepstack = None
        if features is not None and len(features) > first:
            kwargs["deepstack_visual_embeds"], self._deepstack = features[:first], features
        return forward(*args, **kwargs)

    def _add_deepstack(self, s: int, l: int, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, L', D] after layer l with layer l's DeepStack features [N, D] added at stage s's
        kept image tokens (each the feature row of its column), as the model adds them at all of them."""
        def index():
            stage, width = self.stages[s], hidden.shape[1]
            target = torch.cat([b * width + img for b, img in enumerate(stage.image)])
            rows = torch.cat([self.deepstack_row[b][cols] for b, cols in enumerate(stage.columns)])
            return target, rows
        target, rows = self._cached(s, "deepstack", index, hidden.device)
        features = self._deepstack[l].to(hidden.device, hidden.dtype)
        return hidden.flatten(0, 1).index_add(0, target, features[rows]).view_as(hidden)

    @property
    def decoding(self) -> bool:
        return self.q_len == 1

    def _pad2d(self) -> torch.Tensor:
        """[B, total] bool: True for real (non-padding) tokens of the whole sequence so far."""
        if self._lm_mask is not None:
            return self._lm_mask.bool().to(self.device)
        # no 2-D mask reached the language model (none given, or per-layer masks: Gemma 3): the
        # prompt is left-padded up to each sample's first position, generated tokens are real
        return torch.arange(self.total_len, device=self.device)[None, :] >= self.first[:, None]

    # -- scores at layer K-1 --------------------------------------------------------------------
    def _tap(self, s: int):
        def callback(module, query, key, attention_mask, scaling):
            if self.stages[s].sel is not None:  # the selection is made once, at prefill
                return
            text_idx = self._text_index(s)
            rows = text_idx
            if "image_rows" in self.needs:
                rows = [torch.cat([t, img]) for t, img in zip(text_idx, self._prev(s)[2])]
            probs = attention_rows(query, key, attention_mask, scaling, pad_rows(rows)) \
                if any(n in self.needs for n in ROW_NEEDS) else None
            # to the engine's device, where the selection runs (nothing moves when layer K-1 sits there)
            self._rows[s] = (to_device(probs, self.device), text_idx,
                             key.to(self.device) if "prev_keys" in self.needs else None)
        return callback

    def _prev(self, s: int):
        """(pos [B, L], valid [B, L], image index per sample, columns per sample, image-token counts,
        real-token counts) entering stage s."""
        if s > 0:
            p = self.stages[s - 1]
            return p.pos, p.valid, p.image, p.columns, p.kept_counts, p.real
        b, length = len(self.batch), self.prompt_len
        pos = torch.arange(length, device=self.device).expand(b, length)
        valid = torch.ones(b, length, dtype=torch.bool, device=self.device)
        columns = [torch.arange(lay.n_image_tokens, device=self.device) for lay in self.batch.layouts]
        counts = [lay.n_image_tokens for lay in self.batch.layouts]
        return pos, valid, self.image_pos, columns, counts, [length] * b

    def _text_index(self, s: int) -> list[torch.Tensor]:
        """Per sample: where the text tokens sit in the sequence entering stage s (computed once)."""
        if s not in self._text_idx:
            pos = self._prev(s)[0]
            self._text_idx[s] = [torch.searchsorted(pos[b].contiguous(), t) for b, t in enumerate(self.text_pos)]
        return self._text_idx[s]

    # -- the wrapped decoder layer ---------------------------------------------------------------
    def _wrap(self, l: int):
        def wrapped(forward, hidden_states, *args, attention_mask=None, position_ids=None, position_embeddings=None,
                    **kwargs):
            s, dev = self.stage_of[l], self.layer_device[l]
            stage = self.stages[s]
            hidden_states = hidden_states.to(dev)  # layers on several devices: the previous layer's may differ
            if l == stage.layer and not self.decoding:
                if stage.sel is None:
                    if "own_rows" in self.needs:
                        self._own_rows(s, l, hidden_states, attention_mask, position_ids, position_embeddings)
                    self._select(s, hidden_states)
                    if self.select_only and s == len(self.stages) - 1:
                        raise Selected
                hidden_states = gather_seq(hidden_states, self._cached(s, "seq", lambda: self._seq_index(s), dev))
            mask = self._cached(s, "mask", lambda: self._mask(s, hidden_states.dtype), dev)
            ropes = self._cached(s, "rope", lambda: self._rope(s, position_embeddings, position_ids, hidden_states),
                                 dev)
            rope, ids = (position_embeddings, position_ids) if ropes is None else ropes[self.layer_type[l]]
            out = forward(hidden_states, *args, attention_mask=mask, position_ids=ids, position_embeddings=rope, **kwargs)
            if self._deepstack is not None and l < len(self._deepstack):
                out = self._add_deepstack(s, l, out)
            return out
        return wrapped

    def _cached(self, s: int, what: str, make, device: torch.device):
        """What `make()` builds for stage s, once per forward call, as a copy on `device` (the layer's)."""
        key = (s, what)
        if key not in self._per_call:
            self._per_call[key] = Copies(make())
        return self._per_call[key].on(device)

    def _seq_index(self, s: int) -> torch.Tensor:
        """[B, Ls + generated]: indices into the sequence entering stage s of the tokens it keeps
        (no-cache generation re-runs the whole sequence; generated tokens are always kept)."""
        start = self.prompt_len if s == 0 else self.stages[s - 1].sel.shape[1]
        extra = self.q_len - self.prompt_len
        return append_generated(self.stages[s].sel, start, extra)

    def _select(self, s: int, hidden: torch.Tensor) -> None:
        """Choose every sample's kept image tokens for stage s and build the stage's index tensors.

        Counts (tokens kept, sequence lengths) are host integers from the plan and the layouts, so
        building the stage makes no device round trip; only the chooser's own work runs per sample.
        """
        stage = self.stages[s]
        hidden = hidden.to(self.device)  # index tensors live there (a copy only when layer K sits elsewhere)
        pos_prev, valid_prev, image_prev, cols_prev, counts_prev, real_prev = self._prev(s)
        chosen_all, kept = [], []
        for b, lay in enumerate(self.batch.layouts):
            img = image_prev[b]
            inputs = StageInputs(columns=cols_prev[b], grids=[(g.start, *g.shape) for g in lay.grids] if s == 0 else None,
                                 newline=self.newline_col[b][cols_prev[b]], sample=b)
            if s == 0:
                inputs.newline_index, inputs.patch_index = self.newline_idx[b], self.patch_idx[b]
            if stage.layer == 0:
                self._embedding_inputs(inputs, b, hidden, img)
                if stage.per_crop:
                    inputs.crops, inputs.crop_keep = self.crops[b], stage.per_crop[b]
            else:
                self._attention_inputs(inputs, s, b, hidden, img)
            k = min(stage.keep(b), counts_prev[b])
            chosen = self.choose(inputs, k, s).to(self.device)
            if chosen.shape != (k,):
                raise RuntimeError(f"a selection returned {tuple(chosen.shape)} indices for keep={k}")
            chosen_all.append(chosen if self.ordered else chosen.sort().values)
            kept.append(k)
        real = [real_prev[b] - counts_prev[b] + k for b, k in enumerate(kept)]
        if self.ordered:
            return self._build_ordered(stage, chosen_all, kept, real, cols_prev)
        new_len = max(real)
        keep_mask = valid_prev.clone()
        for b, chosen in enumerate(chosen_all):
            keep_mask[b, image_prev[b]] = False
            keep_mask[b, image_prev[b][chosen]] = True
        take = keep_mask
        stage.fillers = len(set(real)) > 1
        if stage.fillers:  # pad short samples with their first dropped tokens (masked out as keys)
            dropped = ~keep_mask
            need = new_len - keep_mask.sum(1, keepdim=True)
            take = keep_mask | (dropped & (dropped.cumsum(1) <= need))
        rank = take.cumsum(1) - 1  # a taken token's index in the new sequence
        length = take.shape[1]
        dest = torch.where(take, rank, new_len)
        sel = torch.zeros(len(real), new_len + 1, dtype=torch.long, device=self.device)
        sel.scatter_(1, dest, torch.arange(length, device=self.device).expand(len(real), length))
        stage.sel = sel[:, :new_len]
        stage.pos = pos_prev.gather(1, stage.sel)
        stage.valid = keep_mask.gather(1, stage.sel)
        stage.dropped = self.prompt_len - stage.valid.sum(1)
        stage.image = [rank[b, image_prev[b][c]] for b, c in enumerate(chosen_all)]
        stage.columns = [cols_prev[b][c] for b, c in enumerate(chosen_all)]
        stage.kept_counts, stage.real = kept, real
        self._rows.pop(s, None)

    def _build_ordered(self, stage: Stage, chosen_all, kept, real, cols_prev) -> None:
        """The pre-LLM stage's sequence when the chooser's order (and repeats) count: per sample,
        every non-image token in place and, in each image's block, its chosen tokens in the order
        chosen; samples shorter than the longest start with masked fillers. Sort keys are integers: token p -> p (k + 1), the r-th chosen token of the image
        block starting at p0 -> p0 (k + 1) + r, so a block's tokens sit between its neighbours."""
        new_len = max(real)
        sel = torch.zeros(len(real), new_len, dtype=torch.long, device=self.device)
        valid = torch.zeros(len(real), new_len, dtype=torch.bool, device=self.device)
        stage.image = []
        for b, chosen in enumerate(chosen_all):
            k, other = kept[b], self.other_pos[b]
            index = torch.cat([other, self.image_pos[b][chosen]])
            key = torch.cat([other * (k + 1), self.block_start[b][chosen] * (k + 1) + torch.arange(k, device=self.device)])
            order = torch.argsort(key)
            pad = new_len - real[b]  # fillers go first, like left padding: the last token stays last
            sel[b, pad:] = index[order]
            valid[b, pad:] = True
            slot = torch.empty_like(order)
            slot[order] = torch.arange(pad, new_len, device=self.device)
            stage.image.append(slot[len(other):])
        stage.sel, stage.pos, stage.valid = sel, sel, valid
        stage.fillers = len(set(real)) > 1
        stage.dropped = self.prompt_len - valid.sum(1)
        stage.columns = [cols_prev[b][c] for b, c in enumerate(chosen_all)]
        stage.kept_counts, stage.real = kept, real
        self._rows.pop(0, None)

    def _own_rows(self, s: int, l: int, hidden, attention_mask, position_ids, position_embeddings) -> None:
        """Rows of layer K = l's own attention on the hidden states entering it (PyramidDrop ranks with
        them): its q/k after input norm and RoPE, caught by the tap before any attention is
        computed, with the mask and positions of the sequence entering the stage."""
        layer, dev = self.layers[l], self.layer_device[l]
        if s > 0:  # the sequence entering stage s is stage s-1's: its mask and rotary tables (of K's type)
            attention_mask = self._cached(s - 1, "mask", lambda: self._mask(s - 1, hidden.dtype), dev)
            ropes = self._cached(s - 1, "rope", lambda: self._rope(s - 1, position_embeddings, position_ids, hidden),
                                 dev)
            position_embeddings, position_ids = ropes[self.layer_type[l]]
        attention_mask = to_device(attention_mask, dev)
        caught = {}

        def catch(module, query, key, mask, scaling):
            caught.update(query=query, key=key, scaling=scaling)
            raise _Caught

        with tap_attention({layer.self_attn: catch}):
            try:
                layer.self_attn(hidden_states=layer.input_layernorm(hidden), position_embeddings=position_embeddings,
                                attention_mask=attention_mask, position_ids=position_ids)
            except _Caught:
                pass
        text_idx = self._text_index(s)
        rows = attention_rows(caught["query"], caught["key"], attention_mask, caught["scaling"], pad_rows(text_idx))
        self._rows[s] = (rows.to(self.device), text_idx, None)

    def _attention_inputs(self, inputs: StageInputs, s: int, b: int, hidden: torch.Tensor, img: torch.Tensor) -> None:
        """Fill the attention fields from layer K-1's rows (and keys from the hidden states entering K)."""
        probs, text_idx, keys = self._rows.get(s, (None, self._text_index(s), None))  # probs [B, H, R, Lk]
        if probs is not None:
            n_text = len(text_idx[b])
            p = probs[b].float()
            text = p[:, :n_text]
            inputs.last_row = text[:, -1, img].mean(0)
            inputs.text_to_text = text[:, :, text_idx[b]]
            inputs.text_to_image = text[:, :, img]
            if "image_rows" in self.needs:
                inputs.image_to_image = p[:, n_text:n_text + len(img)][:, :, img]
        if keys is not None or "normed_hidden" in self.needs:
            rows = torch.cat([img, text_idx[b]])
            if keys is not None:  # [B, H, L, d] -> [n + T, H d]
                inputs.prev_keys = keys[b][:, rows].transpose(0, 1).flatten(1).float()
            if "normed_hidden" in self.needs:
                with torch.no_grad():
                    inputs.normed_hidden = self.lm.norm(hidden[b, rows]).float().to(self.device)
        if "embeds" in self.needs:
            h = self._input_embeds[b].to(self.device)
            inputs.text_embeds, inputs.image_embeds = h[self.text_pos[b]].float(), h[self.image_pos[b]].float()
        if "keys" in self.needs:
            with torch.no_grad():
                inputs.keys = self.layers[self.stages[s].layer].self_attn.k_proj(hidden[b, img]).float().to(self.device)

    def _embedding_inputs(self, inputs: StageInputs, b: int, hidden: torch.Tensor, img: torch.Tensor) -> None:
        """Fill the pre-LLM fields from the embeddings entering layer 0 and the vision capture."""
        inputs.positions = img
        inputs.question = self.batch.questions[b] if self.batch.questions is not None else None
        inputs.text_embeds = hidden[b, self.text_pos[b]].float()
        inputs.image_embeds = hidden[b, img].float()
        if "cls" in self.needs:  # the vision tower may sit on another device
            inputs.saliency, inputs.vision_keys = to_device(self.vision.columns(self.batch)[b], self.device)
        if "vision_features" in self.needs:
            inputs.vision_features = self.vision.feature_columns(self.batch)[b].to(self.device)

    # -- masks and positions ------------------------------------------------------------------------
    def _needs_mask(self, s: int) -> bool:
        return self.padded or self.stages[s].fillers

    def _keys_ok(self, s: int) -> torch.Tensor:
        """[B, Ls + generated]: keys of stage s's sequence that queries may attend to."""
        stage, pad2d = self.stages[s], self._pad2d()
        prompt = stage.valid & pad2d.gather(1, stage.pos)
        return torch.cat([prompt, pad2d[:, self.prompt_len:]], dim=1)

    def _mask(self, s: int, dtype) -> torch.Tensor | None:
        """Additive mask [B, 1, q, keys] (causal in kept order, padding and fillers masked; in the
        prefill of a family with bidirectional images, also every kept token of an image to every
        other of that image, as the model's own mask), or None where plain causal attention is the
        same thing (no padding, no fillers, causal images)."""
        both_ways = self.blocks is not None and not self.decoding
        if not self._needs_mask(s) and not both_ways and (self.decoding or self.mask_free):
            return None
        ok = self._keys_ok(s) if self._needs_mask(s) else None
        if self.decoding:
            allowed = ok[:, None, None, :]
        else:
            n = ok.shape[1] if ok is not None else self.stages[s].sel.shape[1] + self.q_len - self.prompt_len
            allowed = torch.tril(torch.ones(n, n, dtype=torch.bool, device=self.device))
            if both_ways:
                generated = torch.full((len(self.batch), self.q_len - self.prompt_len), -1, device=self.device)
                block = torch.cat([self.blocks, generated], dim=1).gather(1, self._tail_pos(s))  # [B, n]
                allowed = allowed | ((block[:, :, None] == block[:, None, :]) & (block[:, :, None] >= 0))
            if ok is not None:
                allowed = (allowed & ok[:, None, :]) | torch.eye(n, dtype=torch.bool, device=self.device)
            allowed = allowed.expand(len(self.batch), n, n)[:, None]
        return torch.zeros((), dtype=dtype, device=self.device).masked_fill(~allowed, torch.finfo(dtype).min)

    def _rope(self, s, position_embeddings, position_ids, hidden) -> dict | None:
        """Per layer type: ((cos, sin), position ids) of stage s's tokens, built once per call when the
        stage starts; where types have their own rotary tables (Gemma 3's sliding and full layers) each
        gets its own from the same ids. None while decoding with original positions: every layer then
        keeps the tables the model gave it."""
        stage, kinds = self.stages[s], set(self.layer_type)
        b = stage.pos.shape[0]
        typed = self._typed_rotary and None not in kinds
        # to the device of the stage's index tensors (the rotary module may sit on another)
        position_embeddings, position_ids = to_device((position_embeddings, position_ids), self.device)
        if self.positions == "original":
            if self.decoding:
                return None
            pos = self._tail_pos(s)
            ids = gather_seq(position_ids, pos) if position_ids is not None else None
            if not typed or ids is None:
                cos, sin = position_embeddings
                return dict.fromkeys(kinds, ((gather_seq(cos, pos), gather_seq(sin, pos)), ids))
        else:
            orig = position_ids.expand(b, -1)
            if self.decoding:
                ids = orig - stage.dropped[:, None]
            else:
                pos = self._tail_pos(s)
                extra = pos.shape[1] - stage.pos.shape[1]
                valid = torch.cat([stage.valid, torch.ones(b, extra, dtype=torch.bool, device=pos.device)], dim=1)
                dropped_before = pos - (valid.cumsum(1) - valid.long())
                ids = gather_seq(orig, pos) - dropped_before
        if typed:
            return {kind: (self.lm.rotary_emb(hidden, position_ids=ids, layer_type=kind), ids) for kind in kinds}
        return dict.fromkeys(kinds, (self.lm.rotary_emb(hidden, position_ids=ids), ids))

    def _tail_pos(self, s: int) -> torch.Tensor:
        """Full-sequence indices of stage s's tokens, with generated tokens appended (no-cache runs)."""
        return append_generated(self.stages[s].pos, self.prompt_len, self.q_len - self.prompt_len)


def sliding_window(config) -> int | None:
    """The window of the text model's sliding-window layers (Gemma 3's local layers, Mistral with a
    window), or None when every layer attends to the whole sequence."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is not None:
        return window if "sliding_attention" in types else None
    return window if getattr(config, "use_sliding_window", True) else None


def check_window(vlm, length: int) -> None:
    """Refuse a run whose sequence (prompt + new tokens) outgrows a sliding attention window: the
    engine's masks are causal over the whole sequence, and the model's windowed KV cache keeps a
    fixed number of entries, which after pruning are no longer the last `window` positions."""
    window = sliding_window(vlm.adapter.language_model(vlm.model).config)
    if window is not None and length > window:
        raise VTAError(f"the prompt and new tokens make {length} positions, more than the {window}-token sliding "
                       f"window of {vlm.name}'s local attention layers; the pruning engine reproduces attention "
                       "within the window only. Use fewer or smaller images, a shorter question or fewer new tokens.")


class _Caught(Exception):
    """Stops an attention forward once its queries and keys are known."""


class Selected(Exception):
    """Stops the forward pass of a `Pruner(select_only=True)` once its last stage has chosen."""


def append_generated(base: torch.Tensor, start: int, extra: int) -> torch.Tensor:
    """base [B, L] followed by the indices start .. start + extra - 1 (tokens generated after the prompt)."""
    if extra <= 0:
        return base
    tail = torch.arange(start, start + extra, device=base.device).expand(base.shape[0], extra)
    return torch.cat([base, tail], dim=1)


def gather_seq(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather x [..., B or 1, L, *rest] along its sequence dim by idx [B, L'].

    Handles hidden states [B, L, D], rotary tables [B or 1, L, d] and position ids [B or 1, L]
    or M-RoPE ids [3, B, L].
    """
    idx = idx.to(x.device)
    if x.dim() == 3 and not x.is_floating_point():  # M-RoPE position ids [3, B, L]
        return torch.stack([gather_seq(part, idx) for part in x])
    x = x.expand(idx.shape[0], *x.shape[1:])
    index = idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(*idx.shape, *x.shape[2:])
    return x.gather(1, index)
