"""Causal ground truth for visual-token importance: which image tokens the answer depends on.

`ablate(vlm, batch, tokens, how, layer)` removes, masks or replaces image tokens and measures the
change of the explained answer (KL of the next-token distribution, drop of the answer's
log-probability); `knockout(vlm, batch, edges, layers)` blocks attention edges between token sets
in chosen layers; `importance(vlm, batch)` is the effect of ablating each
image token (or block) alone, candidates batched; `oracle(vlm, batch, keep)` the kept set found by
search on the effect; `horizon(vlm, batch, method, keep)` the layer from which a method's selection
is no better than random; `agreement(vlm, batch, method, keep)` how much of the oracle it recovers
(`horizons` and `agreements`: several methods at once, sharing their random and oracle sets);
`reference(vlm, batch)` is the unablated answer they explain.
"""
from .ablation import HOWS, AblationResult, Reference, ablate, reference
from .agreement import AgreementResult, agreement, agreements
from .edges import EDGES, SETS, Edge
from .horizon import HorizonResult, horizon, horizons
from .importance import importance
from .knockout import knockout
from .oracle import oracle

__all__ = ["EDGES", "HOWS", "SETS", "AblationResult", "AgreementResult", "Edge", "HorizonResult", "Reference", "ablate",
           "agreement", "agreements", "horizon", "horizons", "importance", "knockout", "oracle", "reference"]
