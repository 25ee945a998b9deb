"""`knockout`: block attention edges in a window of decoder layers and measure what the answer loses.

arXiv 2411.18620 blocks image -> question, image -> last token and question -> last token in
windows of k layers and finds where the image reaches the answer: directly at the last token, or
through the question tokens first. The edges and how they are blocked: `causal.edges`.
"""
from __future__ import annotations

from ..errors import VTAError
from .ablation import AblationResult, Reference, explained, measure
from .edges import Knockout, parse_edges


def knockout(vlm, batch, edges, layers, *, target: list[str] | None = None, ref: Reference | None = None,
             answers: bool = False, max_new_tokens: int = 8) -> AblationResult:
    """Block attention `edges` in decoder `layers` only, and measure the change of the explained answer.

    Args:
        vlm, batch: a `VLM` and its `VLMInputs` (any batch size; left padding).
        edges: an edge name ("image->question", "image->last", "question->last", "image->text", or
            any "A->B" of `edges.SETS`), an `Edge` (e.g. an object's image-token columns ->
            "question"), or a list of them. "A->B": B's queries may not attend to A's keys.
        layers: decoder layer indices (an int, a list or a range; negative counts from the end).
            Empty: nothing is blocked, the plain forward.
        target, ref, answers, max_new_tokens: as in `ablate`.
    Returns:
        `AblationResult`: kl [B], logprob_drop [B], logits [B, vocab] (next token at the last
        prompt position), on the CPU.
    """
    if len(batch) == 0:
        raise VTAError("the batch is empty: prepare at least one sample.")
    parsed = parse_edges(edges, batch)
    layers = [layers] if isinstance(layers, int) else list(layers)
    layers = sorted({vlm.check_layer(l, "knockout layer") for l in layers})
    ref = explained(vlm, batch, ref, target, max_new_tokens)
    return measure(vlm, batch, ref, name="knockout", contexts=lambda: [Knockout(vlm, batch, parsed, layers)],
                   answers=answers, max_new_tokens=max_new_tokens)
