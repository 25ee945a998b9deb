"""Causal ground truth for visual-token importance: which image tokens the answer depends on.

`ablate(vlm, batch, tokens, how, layer)` removes or replaces image tokens and measures the change of
the explained answer (KL of the next-token distribution, drop of the answer's log-probability);
`reference(vlm, batch)` is the unablated answer it explains.
"""
from .ablation import HOWS, AblationResult, Reference, ablate, reference

__all__ = ["HOWS", "AblationResult", "Reference", "ablate", "reference"]
