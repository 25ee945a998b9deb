"""Seeing queries and keys after RoPE / M-RoPE, inside a stock `transformers` forward pass.

Every decoder attention module in transformers 5 calls
`ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)`
with the post-rotary query [B, H, Lq, D], key [B, Hkv, Lk, D] (after the KV-cache update) and
the mask the model built. `tap_attention` overrides that entry locally for the duration of a
`with` block: for the modules it watches it first calls a callback, then the original function,
so the attention output (SDPA by default) is exactly what the model would compute. Other modules
(the vision tower, other models) pass straight through. Taps nest.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable

from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

# callback(module, query, key, attention_mask, scaling)
TapCallback = Callable[[nn.Module, "torch.Tensor", "torch.Tensor", "torch.Tensor | None", float], None]


def _eager_of(module: nn.Module) -> Callable:
    """The eager attention function of the module's own modeling file (the default of get_interface)."""
    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        raise RuntimeError(f"{type(module).__name__} has no eager_attention_forward; use attn_implementation='sdpa'.")
    return fn


@contextmanager
def tap_attention(callbacks: dict[nn.Module, TapCallback]):
    """Call `callbacks[module](module, query, key, attention_mask, scaling)` before each watched attention.

    Args:
        callbacks: attention modules (e.g. `layer.self_attn` of decoder layers) -> callback.
    """
    by_id = {id(m): cb for m, cb in callbacks.items()}
    impls = {m.config._attn_implementation for m in callbacks}
    saved = {}
    for impl in impls:
        saved[impl] = ALL_ATTENTION_FUNCTIONS._local_mapping.get(impl)
        previous = saved[impl] or ALL_ATTENTION_FUNCTIONS._global_mapping.get(impl)

        def wrapper(module, query, key, value, attention_mask, *args, _previous=previous, **kwargs):
            callback = by_id.get(id(module))
            if callback is not None:
                callback(module, query, key, attention_mask, kwargs.get("scaling", getattr(module, "scaling", None)))
            fn = _previous if _previous is not None else _eager_of(module)
            return fn(module, query, key, value, attention_mask, *args, **kwargs)

        ALL_ATTENTION_FUNCTIONS[impl] = wrapper
    try:
        yield
    finally:
        for impl, old in saved.items():
            if old is None:
                del ALL_ATTENTION_FUNCTIONS[impl]
            else:
                ALL_ATTENTION_FUNCTIONS[impl] = old
