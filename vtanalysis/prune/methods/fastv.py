"""FastV (Chen et al. 2024, "An image is worth 1/2 tokens after layer 2").

Score: attention of layer K-1, head-mean, last prompt token's row, over image tokens.
Keep the top-k image tokens; layers K.. see only those (original RoPE positions kept).
Defaults from the official README: K = 2 (the HF demo uses K = 3).

Fidelity: equal to the authors' selection on every case tried (pkunlp-icler/FastV: the top-k of the
head-mean last row of layer K-1's attention over the image tokens).

Rounding. The authors' two code paths turn a ratio into a count differently:
- `src/FastV/llava-hf/transformers/src/transformers/models/llama/modeling_llama.py`,
  `LlamaModel.fastv_forward`: round(N x (1 - R)) tokens for a pruned share R: 58 of 576 at R = 0.9;
- `src/FastV/lmms-eval/fastv_kvcache.py`, `FastVLlamaModel.forward`: int(576 x ratio): 57 of 576 at 0.1.
Ours follows the llava-hf path: the plan is `single_stage(LAYER, rounding="round")`, so a ratio
`keep` gives round(N x keep) (`budget.keep_count`): keep=0.1 of 576 keeps 58. Pass keep=57 (a count)
for the lmms-eval file's budget.
"""
from __future__ import annotations

from ...rules.topk import top_k
from ..plans import single_stage
from ..registry import Method, Need, register

LAYER = 2
select = top_k  # the rule: top-k of the scores, in sequence order


def choose(inputs, keep, stage):
    return select(inputs.last_row, keep)


register(Method(name="fastv", summary="FastV: top-k of layer K-1 last-row attention (K=2)", where="llm",
                needs=(Need.LAST_ROW,), choose=choose, plan=single_stage(LAYER, rounding="round")))
