"""`importance`: the causal effect of ablating each image token (or block of tokens) alone.

    importance[b, i] = effect on sample b's explained answer of ablating candidate(i) alone

where candidate(i) is token i (block=1) or the block x block patch of its grid that holds it
(the effect is broadcast back to every token of the block; LLaVA-NeXT newline tokens, in no grid,
are candidates of their own), and the effect is the KL of the next-token distribution at the last
prompt position or the drop of the answer's log-probability (`ablate` defines both).

How it runs: per sample, one unablated teacher-forced pass is recorded from decoder layer `layer`
on (`replay.record`); candidates then replay layers `layer` .. L-1 as a batch of ablated copies,
`chunk` copies per forward (sized to a memory budget), so layers < `layer` run once per sample and
the cost scales with the layers that differ. Candidates are sorted by where they sit in the
sequence and each chunk replays only the positions from its first candidate on (the earlier ones
are unchanged under causal attention; their keys and values come from the recorded pass), so the
cost also follows the part of the sequence that differs. "drop" and "mask" are computed the same way (keys
masked from `layer` on): with original positions they are the same ablation (`tests/test_knockout.py`
checks the engine's drop against the mask). Nothing crosses to the host per candidate.
"""
from __future__ import annotations

import torch

from ..errors import VTAError
from .ablation import HOWS, Reference, explained
from .replay import each_sample, record, replay

MEASURES = ("kl", "logprob_drop")


def candidate_columns(lay, block: int) -> list[list[int]]:
    """Per candidate, the image-token columns it ablates (host lists, from the layout)."""
    n = lay.n_image_tokens
    if block == 1:
        return [[t] for t in range(n)]
    out, covered = [], set()
    for grid in lay.grids:
        h, w = grid.shape
        for top in range(0, h, block):
            for left in range(0, w, block):
                out.append([grid.start + r * w + c for r in range(top, min(top + block, h))
                            for c in range(left, min(left + block, w))])
        covered.update(range(grid.start, grid.stop))
    return out + [[col] for col in range(n) if col not in covered]  # no grid (LLaVA-NeXT newlines): alone


def candidates(lay, block: int) -> torch.Tensor:
    """[n_candidates, n_image] bool: which image-token columns each candidate ablates (built on the host
    from one flat index, before any run)."""
    n, cols = lay.n_image_tokens, candidate_columns(lay, block)
    rows = torch.zeros(len(cols) * n, dtype=torch.bool)
    rows[torch.tensor([i * n + c for i, row in enumerate(cols) for c in row], dtype=torch.long)] = True
    return rows.view(len(cols), n)


def untouched_prefix(vlm, batch, b: int, columns: list[list[int]], positions: list[int]) -> list[int]:
    """Per candidate, how many leading positions it leaves unchanged in every layer: up to its first
    ablated token (causal attention), or up to the sample's first image token where images are
    attended both ways (Gemma 3: a token sees later tokens of its image)."""
    if vlm.adapter.attention_blocks(batch.model_inputs) is not None:
        return [min(positions)] * len(columns)
    return [min(positions[c] for c in cols) for cols in columns]


def default_chunk(vlm, length: int, memory_mb: float) -> int:
    """Copies per forward within `memory_mb`: per copy, about the layer activations (hidden, MLP) and
    the attention scores and mask of `length` tokens, in the model's dtype."""
    cfg = vlm.config.text_config
    width = max(cfg.hidden_size * 4, cfg.intermediate_size * 3)
    per_copy = length * (width + 2 * cfg.num_attention_heads * length) * torch.finfo(vlm.dtype).bits // 8
    return max(1, int(memory_mb * 2**20 // max(per_copy, 1)))


def image_mean(rec, lay) -> torch.Tensor:
    """[D] the mean LLM input embedding of the sample's image tokens, newline tokens excluded (`ablate`'s "mean")."""
    patches = torch.ones(lay.n_image_tokens, dtype=torch.bool)
    patches[list(lay.newline_columns)] = False
    return rec.inputs[0][0, rec.image_positions[patches.to(rec.image_positions.device)]].mean(0)


def importance(vlm, batch, how: str = "drop", layer: int = 0, block: int = 1, measure: str = "kl", *,
               target: list[str] | None = None, ref: Reference | None = None, chunk: int | None = None,
               memory_mb: float = 1024, max_new_tokens: int = 8, progress: bool = False) -> torch.Tensor:
    """The effect of ablating each image token (or block) alone, per sample.

    Args:
        vlm, batch: a `VLM` and its `VLMInputs` (any batch size; left padding).
        how: "drop" / "mask" (from `layer` on) or "zero" / "mean" (input embeddings, layer 0), as in `ablate`.
        layer: the first decoder layer without the candidate's tokens; negative counts from the end.
        block: 1 for single tokens, or b for b x b patches of each grid.
        measure: "kl" (KL(unablated || ablated) at the last prompt position) or "logprob_drop".
        target, ref, max_new_tokens: the answer explained, as in `ablate`.
        chunk: ablated copies per forward; default: as many as fit `memory_mb`.
        progress: a progress bar over samples.
    Returns:
        FloatTensor [B, max n_image] on the CPU (NaN past a sample's own image tokens).
    """
    if how not in HOWS:
        raise VTAError(f"how={how!r}; use one of {', '.join(map(repr, HOWS))}.")
    if measure not in MEASURES:
        raise VTAError(f"measure={measure!r}; use 'kl' or 'logprob_drop'.")
    if how in ("zero", "mean") and layer != 0:
        raise VTAError(f"how={how!r} replaces input embeddings, before every layer: use layer=0.")
    if not isinstance(block, int) or block < 1:
        raise VTAError(f"block={block!r}: give a positive number of tokens per block side (1 = single tokens).")
    if len(batch) == 0:
        raise VTAError("the batch is empty: prepare at least one sample.")
    layer = vlm.check_layer(layer, "ablation layer")
    ref = explained(vlm, batch, ref, target, max_new_tokens)
    widest = max(lay.n_image_tokens for lay in batch.layouts)
    out = torch.full((len(batch), widest), float("nan"))
    with torch.inference_mode():
        recorded = record(vlm, batch, ref, layer)
        for b in each_sample(batch, progress, f"importance ({how}, layer {layer})"):
            rec, lay = recorded[b], batch.layouts[b]
            columns = candidate_columns(lay, block)
            positions = lay.image_positions.tolist()  # ok-host: the layout (a CPU tensor), once per sample
            prefix = untouched_prefix(vlm, batch, b, columns, positions)
            order = sorted(range(len(columns)), key=prefix.__getitem__)  # neighbours in the sequence share a chunk
            sets = candidates(lay, block)[order].to(vlm.device)
            # small chunks replay less: a chunk replays from its first candidate's position on
            size = chunk or min(default_chunk(vlm, rec.inputs[0].shape[1], memory_mb), max(8, -(-len(order) // 16)))
            mean = image_mean(rec, lay) if how == "mean" else None
            effects = []
            for start in range(0, len(order), size):
                kl, logprob = replay(vlm, rec, sets[start:start + size], how, ref.log_probs[b].to(vlm.device),
                                     ref.ids[b], ref.mask[b], mean, prefix=prefix[order[start]])
                effects.append(kl if measure == "kl" else ref.logprob[b].to(logprob.device) - logprob)
            effect = torch.cat(effects).float()
            # each token takes its candidate's effect (every token is in exactly one candidate)
            out[b, :lay.n_image_tokens] = (sets.float().T @ effect).cpu()  # ok-host: the result, once per sample
    return out
