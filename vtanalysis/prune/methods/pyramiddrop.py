"""PyramidDrop (Xing et al. 2024, "PyramidDrop: accelerating your large vision-language models via
pyramid visual redundancy reduction"; authors' code Cooperx521/PyramidDrop, `pdrop_rank_drop`).

Stages at layers 8, 16, 24 of 32 (scaled to other depths) keep lambda, lambda^2, lambda^3 of the
image tokens; each stage ranks the remaining image tokens by the last instruction token's softmax
attention at layer K itself (its query and keys computed on the states entering K), head-mean.
Positions are renumbered over the shortened sequence, as the authors' code rebuilds them.

Fidelity: run against the authors' released code on shared inputs (issue 41), the kept set of
every stage equals theirs on every case tried (Cooperx521/PyramidDrop,
`llava/model/modeling_llama_pdrop.py`, `LlamaModel.pdrop_rank_drop`). Difference: `keep` is the
budget averaged over the layers and sets lambda (their lambda = 0.5 is keep ~0.47 at 32 layers).
"""
from __future__ import annotations
from ...errors import VTAError
from ..budget import average_tokens, bisect_increasing
from ..plans import budget_tokens, scaled_layers
from . import fastv
from ..registry import Method, Need, register


def pyramid_plan(vlm, n_image, keep, layers=None, ratios=None, **_):
    """PyramidDrop: stages at layers 8, 16, 24 (of 32) keeping lambda, lambda^2, lambda^3 of the image
    tokens. `keep` is the budget averaged over the decoder layers and sets lambda (bisection; the
    authors' default lambda = 0.5 is keep ~0.47 at 32 layers); `ratios` overrides the per-stage shares.
    """
    stage_layers = list(layers) if layers is not None else scaled_layers(vlm, (8, 16, 24))
    if ratios is None:
        budget = budget_tokens(keep, n_image)

        def average(lam):
            return average_tokens(n_image, [(l, n_image * lam ** (i + 1)) for i, l in enumerate(stage_layers)],
                                  vlm.num_layers)

        if budget < average(0.0):
            raise VTAError(f"pyramiddrop keeps every image token before layer {stage_layers[0]}, so its average "
                           f"budget is at least {average(0.0) / n_image:.3f} of them; got keep={keep}.")
        _, lam = bisect_increasing(average, budget, 0.0, 1.0)
        ratios = [lam ** (i + 1) for i in range(len(stage_layers))]
    return [(l, max(1, int(n_image * r + 1e-9))) for l, r in zip(stage_layers, ratios)]



def choose_pyramid(inputs, keep, stage):
    """PyramidDrop (Cooperx521/PyramidDrop, `pdrop_rank_drop`): the last instruction token's softmax
    over all keys at layer K itself (its q/k on the states entering K), head-mean, over the image tokens."""
    return fastv.select(inputs.last_row, keep)



register(Method(name="pyramiddrop", summary="PyramidDrop: layer K's own last-token attention over the image, 3 stages, "
                "renumbered", where="llm", needs=(Need.OWN_ROWS,), choose=choose_pyramid, plan=pyramid_plan,
                positions="renumber"))
