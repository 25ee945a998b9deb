"""Function-preserving growth of a demo LLaVA's decoder (issue 42): each trained layer followed by
copies of itself whose residual branches start at zero. `train_grow` fine-tunes the grown model;
`load_vlm("demo-grown")` rebuilds it before that fine-tuning, as the control of the demo's
layer-wise figures."""
from __future__ import annotations

import copy

import torch
import transformers


def is_copy(layer: int, copies: int) -> bool:
    """Whether decoder layer `layer` of the grown model is a copy (not the trained layer it repeats)."""
    return layer % (1 + copies) != 0


def grow(small, copies: int, noise: float = 0.0, seed: int = 0):
    """`small` (a demo VLM) with each decoder layer followed by `copies` copies of itself whose residual
    branches start at zero (self_attn.o_proj and mlp.down_proj zeroed): every copy adds nothing to the
    residual stream, so the grown model computes exactly what `small` does. Plain copies (no zeroing)
    apply each layer's update 1 + `copies` times and answered 0.47 held-out; zeroed, 0.962.

    `noise`: the copies' other matrices (q, k, v, gate, up) get Gaussian noise of `noise` x the
    matrix's standard deviation. The function is unchanged (their outputs are still multiplied by
    zero), but exact copies of one layer see the same input and get the same gradient, so they
    would move in lockstep (measured: after 3 steps the three copies' output norms were equal to
    the third digit) and stay one layer repeated; the noise breaks that symmetry.
    """
    from ..vlm import VLM

    cfg = copy.deepcopy(small.model.config)
    n = cfg.text_config.num_hidden_layers
    cfg.text_config.num_hidden_layers = n * (1 + copies)
    if getattr(cfg.text_config, "layer_types", None) is not None:
        cfg.text_config.layer_types = [cfg.text_config.layer_types[0]] * (n * (1 + copies))
    model = transformers.LlavaForConditionalGeneration(cfg)
    source, gen = small.model.state_dict(), torch.Generator().manual_seed(seed)
    state = {}
    for key, value in source.items():
        if "language_model.layers." not in key:
            state[key] = value.clone()
            continue
        head, rest = key.split(".layers.", 1)
        i, name = rest.split(".", 1)
        for j in range(1 + copies):
            w = value.clone()
            if j > 0 and name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
                w.zero_()
            elif j > 0 and noise > 0 and w.dim() == 2:
                w += noise * w.std() * torch.randn(w.shape, generator=gen)
            state[f"{head}.layers.{int(i) * (1 + copies) + j}.{name}"] = w
    model.load_state_dict(state)
    return VLM(model, small.processor, name="demo (grown)")
