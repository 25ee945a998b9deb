"""Prefill FLOPs of the decoder by a stated formula.

Per layer with n tokens, hidden d and FFN width m (gated FFN, three matrices, as Llama's SwiGLU):

    FLOPs(n) = 4 n d^2 + 2 n^2 d + 3 n d m

the form AdaptInfer's code uses (FastV's paper writes 2 n d m for a two-matrix FFN). Grouped-query
attention's smaller K/V projections are not discounted, so absolute numbers are upper bounds;
ratios between pruned and unpruned runs are what the formula is for.
"""
from __future__ import annotations


def layer_flops(n: int, d: int, m: int) -> int:
    return 4 * n * d * d + 2 * n * n * d + 3 * n * d * m


def prefill_flops(tokens_per_layer: list[int], d: int, m: int) -> int:
    """Sum of `layer_flops` over the decoder layers, given each layer's token count."""
    return sum(layer_flops(n, d, m) for n in tokens_per_layer)


def unpruned_prefill_flops(vlm, batch) -> list[int]:
    """Per sample: `prefill_flops` of its real (unpadded) prompt tokens through every decoder layer."""
    cfg = vlm.config.text_config
    lengths = batch.model_inputs["attention_mask"].sum(1).tolist()  # ok-host: outside any forward pass
    return [prefill_flops([int(n)] * vlm.num_layers, cfg.hidden_size, cfg.intermediate_size) for n in lengths]
