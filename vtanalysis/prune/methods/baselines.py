"""The baselines: `none` (no pruning, through the same path) and, before the LLM, `uniform` (an even 2-D lattice of kept tokens per grid) and
`pool` (the same lattice, each kept token carrying the average of its block).

Per grid (`Grid`: LLaVA-1.5 the image; LLaVA-NeXT the base image, then the unpadded tiles; Qwen2-VL
an image or frame) of h x w tokens keeping k of them: an r x c lattice with r / c close to h / w
and r c >= k; lattice point (i, j) sits at row floor((i + 1/2) h / r), column floor((j + 1/2) w / c),
and k of the r c points are taken at even strides in row-major order. `pool` gives the kept point
(i, j) the mean of the LLM input embeddings over its adaptive-pooling block (rows floor(i h / r) to
ceil((i + 1) h / r), as `F.adaptive_avg_pool2d`; LLaVA-OneVision pools video frames this way); with
k < r c the blocks of the points not taken are dropped. A sample's budget is split over its grids
in proportion to their tokens (largest remainders first); LLaVA-NeXT newline tokens are kept on top.
"""
from __future__ import annotations

import torch

from ..._core.scoped import scoped
from ...rules.lattice import grid_counts, lattice, lattice_shape, pool_blocks  # noqa: F401 (the rule)
from ..engine import split_newlines
from ..plans import choose_first, no_stage, pre_stage
from ..registry import Method, register


def choose_uniform(inputs, keep, stage):
    """The lattice tokens of every grid (in sequence order), newlines on top."""
    newlines, _ = split_newlines(inputs)
    grids = inputs.grids or [(0, 1, len(inputs.columns) - len(newlines))]
    counts = grid_counts([h * w for _, h, w in grids], keep - len(newlines))
    device = inputs.columns.device
    picked = torch.cat([newlines, *[start + lattice(h, w, k, device)[0] for (start, h, w), k in zip(grids, counts)]])
    rank = inputs.positions[picked] if inputs.positions is not None else picked
    return picked[torch.argsort(rank, stable=True)]


class PoolMerge:
    """While active, the LLM input embeddings of the tokens `choose_uniform` keeps become the means of
    their lattice blocks (a pre-hook on the language model: every prefill, and every no-cache
    re-run of the prompt, sees the pooled embeddings)."""

    def __init__(self, vlm, batch, stage, capture=None, crops=None):
        self.vlm, self.batch, self.stage = vlm, batch, stage
        self.prompt_len = batch.model_inputs["input_ids"].shape[1]

    def __enter__(self):
        self._ctx = scoped(self.vlm.adapter.language_model(self.vlm.model), "pre", self._pool)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)

    def _pool(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is None or embeds.shape[1] < self.prompt_len:  # decoding: the prompt is cached
            return None
        out = embeds.clone()
        # Qwen3-VL's DeepStack features [N, D] (rows: every sample's image tokens in sequence order) are
        # pooled over the same blocks, so a kept token carries its block's mean at every layer (on the
        # embeddings' device: under a device map the vision tower's output may sit elsewhere)
        deepstack = [f.to(embeds.device, copy=True) for f in kwargs.get("deepstack_visual_embeds") or []]
        offset = 0
        for b, lay in enumerate(self.batch.layouts):
            grids = lay.grids
            counts = grid_counts([g.stop - g.start for g in grids], self.stage.keep(b) - len(lay.newline_columns))
            in_order = lay.image_positions.sort().values if deepstack else None
            for g, k in zip(grids, counts):
                (h, w), pos = g.shape, lay.image_positions[g.start:g.stop].to(embeds.device)
                points, taken = lattice(h, w, k, embeds.device)
                if not len(points):
                    continue
                out[b, pos[points]] = pool_blocks(embeds[b, pos], h, w, k, taken).to(out.dtype)
                if deepstack:
                    rows = (offset + torch.searchsorted(in_order, lay.image_positions[g.start:g.stop])).to(embeds.device)
                    for f in deepstack:
                        f[rows[points]] = pool_blocks(f[rows], h, w, k, taken).to(f.dtype)
            offset += lay.n_image_tokens
        kwargs["inputs_embeds"] = out
        if deepstack:
            kwargs["deepstack_visual_embeds"] = deepstack
        return args, kwargs


def prepare_pool(vlm, batch, stage, capture, crops):
    return PoolMerge(vlm, batch, stage)


register(Method(name="none", summary="no pruning, through the same path (the baseline)", where="llm", needs=(),
                choose=choose_first, plan=no_stage))
register(Method(name="uniform", summary="baseline: tokens evenly spaced in 2-D over each grid, before the LLM",
                where="pre", needs=(), choose=choose_uniform, plan=pre_stage(rounding="round"), positions="renumber"))
register(Method(name="pool", summary="baseline: 2-D average pooling of the image embeddings per grid to the budget, "
                "before the LLM", where="pre", needs=(), choose=choose_uniform, plan=pre_stage(rounding="round"),
                positions="renumber", prepare=prepare_pool))
