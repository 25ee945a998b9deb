"""Selection rules: the pure tensor functions behind the pre-LLM pruning methods.

Each module here imports torch and its sibling modules only, never the rest of vtanalysis, so the
vLLM plugin (`integrations/vllm`, the `vtanalysis-vllm` distribution) ships this folder and calls the
same rules `vtanalysis.prune` runs (one definition of each), under vLLM's own torch.

- `budget`: a `keep` ratio or count -> a token count (`keep_count`), and per crop (`crop_budgets`);
- `lattice`: the `uniform` / `pool` lattice and its blocks' means;
- `divprune`: DivPrune's greedy max-min diversity;
- `topk`: the top-k of a score (FastV, FasterVLM);
- `visionzip`: VisionZip's dominant and contextual tokens and their merge;
- `indices`: index helpers that stay on the device.
"""
