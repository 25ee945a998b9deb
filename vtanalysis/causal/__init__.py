"""Causal ground truth for visual-token importance: which image tokens the answer depends on.

`ablate(vlm, batch, tokens, how, layer)` removes, masks or replaces image tokens and measures the
change of the explained answer (KL of the next-token distribution, drop of the answer's
log-probability); `knockout(vlm, batch, edges, layers)` blocks attention edges between token sets
in chosen layers; `importance(vlm, batch)` is the effect of ablating each
image token (or block) alone, candidates batched; `reference(vlm, batch)` is the unablated answer they explain.
"""
from .ablation import HOWS, AblationResult, Reference, ablate, reference
from .edges import EDGES, SETS, Edge
from .importance import importance
from .knockout import knockout

__all__ = ["EDGES", "HOWS", "SETS", "AblationResult", "Edge", "Reference", "ablate", "importance", "knockout", "reference"]
