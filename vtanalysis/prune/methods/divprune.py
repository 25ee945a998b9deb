"""DivPrune (Alvar et al. 2025, "DivPrune: diversity-based visual token pruning for large multimodal
models"; authors' code vbdi/divprune): keep the image tokens that solve the max-min diversity
problem greedily on the LLM's input embeddings. Sequential in the picks; each pick stays on the
device (the argmax is a 1-element tensor used as an index), 7 dispatched ops a pick.

    x: [n, D] -> [k] indices (pick order)
        D_ij = 1 - cos(x_i, x_j)
        pick 1  = argmax_j (second-smallest entry of column j of D: the distance to j's nearest other token)
        pick i  = argmax_j min_{p picked} D_pj

Fidelity: in float32 our picks equal the authors' (`LLaVA/llava/model/llava_arch.py`,
`LlavaMetaForCausalLM.DivPrune`, with `pairwise_cosine_similarity`) on every case tried; the count
is theirs, int(round(ratio x N)) (`pre_stage(rounding="round")`).
Precision: the authors run it in the model's float16, and their published numbers come from that.
There, D = 1 - cos for tokens with cosine ~0.99 rounds to steps of ~5e-4, so the max-min distances
collapse to a few distinct values (3 to 6 nearest-neighbour distances over 576 tokens, against
~550 in float32) and the ties go to the lowest index (argmax): kept sets as different from the
float32 rule as Jaccard 0.05 (measured 0.05 to 0.24 on 576 float16 tokens of cosine ~0.99; 0.05 on
LLaVA-1.5 in issue 41). `authors_dtype=True` computes the rule in the model's dtype as their code
does (a dtype or its name, e.g. "float16", forces one); the default is our float32 rule.
Deviation kept in both: a picked token is never picked again (see `divprune`).
"""
from __future__ import annotations

from ...rules.divprune import divprune
from ..plans import pre_stage, resolve_authors_dtype, rule_dtype
from ..registry import Method, Need, register


def choose_divprune(inputs, keep, stage, authors_dtype=False):
    """DivPrune over every image token the LLM would receive (LLaVA-NeXT newlines are candidates
    too, as in the authors' code), kept in sequence order. `authors_dtype`: see `divprune`."""
    return divprune(inputs.image_embeds, keep, rule_dtype(authors_dtype)).sort().values



register(Method(name="divprune", summary="DivPrune: greedy max-min diversity (1 - cosine) of the LLM's image embeddings, "
                "before the LLM", where="pre", needs=(Need.EMBEDS,), choose=choose_divprune,
                plan=pre_stage(rounding="round"), positions="renumber", choose_knobs=("authors_dtype",),
                resolve_knobs=resolve_authors_dtype))
