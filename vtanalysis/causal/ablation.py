"""Ablate image tokens and measure what the answer loses: `reference` and `ablate`.

The answer explained is, per sample, the unablated model's greedy answer (or a given target
string), read under teacher forcing: its log-probability is the sum over its tokens t (up to and
including the first end-of-sequence token) of log p(a_t | prompt, a_<t). Two effects per sample:

    kl            KL(P || Q) = sum_v P(v) (log P(v) - log Q(v)) of the next-token distributions at the
                  last prompt position, P unablated, Q ablated
    logprob_drop  log p_unablated(answer) - log p_ablated(answer)

Ablation semantics (`how`):

    drop   the tokens leave the sequence from decoder layer `layer` on (hidden states and KV cache);
           the others keep their original positions. `layer=0`: they never enter the LLM. This is
           the pruning engine's stage with the complement kept, so it is exactly what a pruning
           method keeping that complement computes, and what arXiv 2512.07580 removes from layer l
           on to find its "information horizon".
    mask   the tokens stay in the sequence, but from decoder layer `layer` on no other query attends
           to them (an attention knockout, `causal.knockout`, of the edges tokens -> every token, as
           arXiv 2411.18620 blocks edges). With original positions this computes what "drop" does
           (a key nobody attends to and an absent key weigh the same), through the attention mask
           instead of a shorter sequence: the two agree to float rounding, which tests check.
    zero   their LLM input embeddings are set to zero (input level only).
    mean   their LLM input embeddings are replaced by the mean input embedding of the sample's image
           tokens (LLaVA-NeXT newline tokens excluded from the mean), as arXiv 2410.07149 ablates an
           object's tokens with the mean embedding (input level only).

M-RoPE positions, LLaVA-NeXT newline tokens and Gemma 3's bidirectional image blocks follow the
layout, as in pruning (`prune.engine`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._core.scoped import scoped
from ..errors import VTAError
from ..prune.engine import Pruner, Stage
from .edges import Edge, Knockout, check_lengths
from ..prune.run import decoding_length, generate

HOWS = ("drop", "mask", "zero", "mean")


@dataclass
class Reference:
    """The unablated model's answer to explain and its likelihood.

    Attributes:
        ids: LongTensor [B, T] the answer tokens (padding after each answer's end).
        mask: BoolTensor [B, T], True for the tokens that count (up to and including the first
            end-of-sequence token, or the target's tokens).
        logprob: [B] log-probability of each answer under teacher forcing.
        log_probs: [B, vocab] log-softmax of the next-token logits at the last prompt position.
        answers: the decoded answers.
    """
    ids: torch.Tensor
    mask: torch.Tensor
    logprob: torch.Tensor
    log_probs: torch.Tensor
    answers: list[str]


@dataclass
class AblationResult:
    """What ablating the tokens did to the explained answer.

    Attributes:
        kl: [B] KL(unablated || ablated) of the next-token distribution at the last prompt position.
        logprob_drop: [B] log p_unablated(answer) - log p_ablated(answer) under teacher forcing.
        logits: [B, vocab] the ablated next-token logits at the last prompt position.
        reference: the `Reference` explained.
        answers: the ablated model's own greedy answers (with `ablate(..., answers=True)`), else None.
    """
    kl: torch.Tensor
    logprob_drop: torch.Tensor
    logits: torch.Tensor
    reference: Reference
    answers: list[str] | None = None


def _answer_mask(ids: torch.Tensor, eos: int | None) -> torch.Tensor:
    """[B, T] True up to and including each row's first `eos` (everything where there is none)."""
    if eos is None:
        return torch.ones_like(ids, dtype=torch.bool)
    is_eos = ids == eos
    before = is_eos.long().cumsum(1) - is_eos.long()  # end-of-sequence tokens strictly before t
    return before == 0


def _sequence_logprob(step_logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B]: sum over the masked steps of log_softmax(step_logits)[id]. step_logits [B, T, V]."""
    steps = step_logits.shape[1]  # generation ends once every answer has ended
    taken = torch.log_softmax(step_logits.float(), -1).gather(2, ids[:, :steps, None])[..., 0]
    return (taken * mask[:, :steps]).sum(1)


def _target_ids(vlm, target: list[str], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    if len(target) != batch_size:
        raise VTAError(f"target has {len(target)} strings for a batch of {batch_size}: give one per sample.")
    tok = vlm.processor.tokenizer
    with vlm.tokenizer_lock:
        rows = [tok(t, add_special_tokens=False)["input_ids"] for t in target]
    if any(len(r) == 0 for r in rows):
        raise VTAError("a target string encodes to no tokens: give each sample a non-empty answer to explain.")
    width = max(map(len, rows))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
    mask = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in rows])
    return ids, mask


def _unablated(vlm, batch, forced_ids=None, max_new_tokens: int = 8):
    pruner = Pruner(vlm, batch, [], None)
    return generate(vlm, batch, pruner, name="reference", forced_ids=forced_ids, share_tower=True,
                    max_new_tokens=decoding_length(vlm, batch, max_new_tokens, forced_ids))


def reference(vlm, batch, *, target: list[str] | None = None, max_new_tokens: int = 8) -> Reference:
    """The answer to explain: the unablated greedy answer (`max_new_tokens` at most), or `target`
    (one string per sample), with its teacher-forced log-probability and the next-token
    log-distribution at the last prompt position."""
    if target is None:
        greedy = _unablated(vlm, batch, max_new_tokens=max_new_tokens)
        ids = greedy.token_ids
        mask = _answer_mask(ids, vlm.processor.tokenizer.eos_token_id)
    else:
        ids, mask = _target_ids(vlm, target, len(batch))
    forced = _unablated(vlm, batch, forced_ids=ids)
    logprob = _sequence_logprob(forced.step_logits, ids, mask)
    with vlm.tokenizer_lock:
        answers = [vlm.processor.tokenizer.decode(row[keep], skip_special_tokens=True).strip() for row, keep in zip(ids, mask)]
    return Reference(ids, mask, logprob, torch.log_softmax(forced.step_logits[:, 0].float(), -1), answers)


def explained(vlm, batch, ref: Reference | None, target: list[str] | None, max_new_tokens: int) -> Reference:
    """The answer an analysis of `batch` explains: `ref` when given, else `reference(...)`; refused
    when the prompt and answer outgrow a sliding attention window (`edges.check_lengths`)."""
    ref = ref if ref is not None else reference(vlm, batch, target=target, max_new_tokens=max_new_tokens)
    check_lengths(vlm, batch, ref.ids)
    return ref


def _columns(batch, tokens) -> list[torch.Tensor]:
    """`tokens` as one sorted CPU LongTensor of image-token columns per sample, checked."""
    if len(batch) == 0:
        raise VTAError("the batch is empty: prepare at least one sample.")
    if isinstance(tokens, torch.Tensor) and tokens.dim() == 1 and len(batch) == 1:
        tokens = [tokens]
    if len(tokens) != len(batch):
        raise VTAError(f"tokens has {len(tokens)} entries for a batch of {len(batch)}: give one set of image-token "
                       "columns per sample (e.g. [torch.tensor([0, 5])] for one sample).")
    out = []
    for b, (cols, lay) in enumerate(zip(tokens, batch.layouts)):
        cols = torch.as_tensor(cols, dtype=torch.long).flatten().cpu()
        n = lay.n_image_tokens
        if cols.numel() and (int(cols.min()) < 0 or int(cols.max()) >= n):  # ok-host: user input, before the run
            raise VTAError(f"sample {b}: image-token columns must lie in [0, {n}) (its image tokens, as `res.kept` "
                           f"numbers them), got {cols.min().item()}..{cols.max().item()}.")  # ok-host: the error
        if cols.unique().numel() != cols.numel():
            raise VTAError(f"sample {b}: a column is listed twice; give each ablated image token once.")
        out.append(cols.sort().values)
    return out


def _drop_stage(vlm, batch, columns: list[torch.Tensor], layer: int):
    """(stages, choose): the pruning engine's stage at `layer` keeping each sample's other image
    tokens. At the first stage the current image tokens are the layout's columns in order, so the
    kept indices are the complement's columns, computed here on the host once."""
    keep = []
    for cols, lay in zip(columns, batch.layouts):
        mask = torch.ones(lay.n_image_tokens, dtype=torch.bool)
        mask[cols] = False
        keep.append(mask.nonzero().flatten().to(vlm.device))
    if all(len(k) == lay.n_image_tokens for k, lay in zip(keep, batch.layouts)):
        return [], None  # nothing ablated: the unablated path itself
    counts = [len(k) for k in keep]
    return [Stage(layer, lambda b: counts[b])], lambda inputs, k, stage: keep[inputs.sample]


def _input_edit(vlm, batch, columns: list[torch.Tensor], how: str):
    """A context that replaces the ablated tokens' LLM input embeddings at the prefill (zero, or the
    mean over the sample's image tokens, newlines excluded)."""
    lm = vlm.adapter.language_model(vlm.model)
    prompt_len = batch.model_inputs["input_ids"].shape[1]
    rows, means = [], []
    for cols, lay in zip(columns, batch.layouts):
        rows.append(lay.image_positions[cols].to(vlm.device))
        patches = torch.ones(lay.n_image_tokens, dtype=torch.bool)
        patches[list(lay.newline_columns)] = False
        means.append(lay.image_positions[patches].to(vlm.device))

    def edit(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is None or embeds.shape[1] != prompt_len:  # decoding steps see the answer tokens only
            return None
        embeds = embeds.clone()
        for b, (pos, every) in enumerate(zip(rows, means)):
            value = embeds[b, every].mean(0) if how == "mean" else torch.zeros_like(embeds[b, 0])
            embeds[b, pos] = value.to(embeds.dtype)
        return args, {**kwargs, "inputs_embeds": embeds}
    return scoped(lm, "pre", edit)


def measure(vlm, batch, ref: Reference, *, name: str, stages=(), choose=None, pre: bool = False,
            contexts=lambda: [], answers: bool = False, max_new_tokens: int = 8) -> AblationResult:
    """Run the batch with an ablation (engine `stages` keeping what `choose` picks, and/or `contexts()`
    attaching an edit) under teacher forcing of `ref`'s answer, and measure the change against `ref`."""
    def run(forced_ids=None):
        pruner = Pruner(vlm, batch, list(stages), choose, positions="original", pre=pre)
        return generate(vlm, batch, pruner, name=name, forced_ids=forced_ids, contexts=contexts, share_tower=True,
                        max_new_tokens=decoding_length(vlm, batch, max_new_tokens, forced_ids))

    forced = run(ref.ids)
    logits = forced.step_logits[:, 0]
    log_q = torch.log_softmax(logits.float(), -1)
    kl = (ref.log_probs.exp() * (ref.log_probs - log_q)).sum(-1)
    drop = ref.logprob - _sequence_logprob(forced.step_logits, ref.ids, ref.mask)
    own = run().answers if answers else None
    return AblationResult(kl=kl, logprob_drop=drop, logits=logits, reference=ref, answers=own)


def ablate(vlm, batch, tokens, how: str = "drop", layer: int = 0, *, target: list[str] | None = None,
           ref: Reference | None = None, answers: bool = False, max_new_tokens: int = 8) -> AblationResult:
    """Ablate image tokens and measure the change of the explained answer.

    Args:
        vlm, batch: a `VLM` and its `VLMInputs` (any batch size; left padding).
        tokens: per sample, the image-token columns to ablate (LongTensor or list; a layout's
            column space, as `prune.run(...).kept` numbers them); one tensor for a batch of one.
        how: "drop" (leave the sequence from `layer` on), "mask" (stay, but unseen from `layer`
            on), "zero" or "mean" (input embeddings; `layer` must be 0). See the module docstring
            for the papers each follows.
        layer: the first decoder layer without the tokens ("drop", "mask"); negative counts from the end.
        target: one answer string per sample to explain instead of the unablated greedy answer.
        ref: a `Reference` computed before (`reference(vlm, batch)`), reused across ablations.
        answers: also generate the ablated model's own greedy answers (one more forward pass).
        max_new_tokens: length of the greedy answers (the reference's and, with answers=True, the ablated).
    Returns:
        `AblationResult` with kl [B], logprob_drop [B], logits [B, vocab] on the CPU.
    """
    if how not in HOWS:
        raise VTAError(f"how={how!r}; use one of {', '.join(map(repr, HOWS))}.")
    if how in ("zero", "mean") and layer != 0:
        raise VTAError(f"how={how!r} replaces input embeddings, before every layer: use layer=0 (or how='drop' to "
                       f"remove the tokens from layer {layer} on).")
    layer = vlm.check_layer(layer, "ablation layer")
    columns = _columns(batch, tokens)
    ref = ref if ref is not None else reference(vlm, batch, target=target, max_new_tokens=max_new_tokens)
    common = dict(name=f"ablate-{how}", answers=answers, max_new_tokens=max_new_tokens)
    if how == "drop":
        stages, choose = _drop_stage(vlm, batch, columns, layer)
        return measure(vlm, batch, ref, stages=stages, choose=choose, pre=bool(stages) and layer == 0, **common)
    if how == "mask":
        check_lengths(vlm, batch, ref.ids)
        knocked = range(layer, vlm.num_layers) if any(len(c) for c in columns) else []
        return measure(vlm, batch, ref, contexts=lambda: [Knockout(vlm, batch, [Edge(columns, "all")], knocked)],
                       **common)
    return measure(vlm, batch, ref, contexts=lambda: [_input_edit(vlm, batch, columns, how)], **common)
