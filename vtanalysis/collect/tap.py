"""Seeing queries and keys after RoPE / M-RoPE, inside a stock `transformers` forward pass.

Every decoder attention module in transformers 5 calls
`ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)`
with the post-rotary query [B, H, Lq, D], key [B, Hkv, Lk, D] (after the KV-cache update) and
the mask the model built. vtanalysis registers, once per attention implementation, a dispatcher
in that entry; `tap_attention` adds callbacks for the modules it watches to the current
`contextvars` context only (thread-safe: another thread's forward pass never sees them). The
dispatcher calls the callbacks of the calling context, then the function that was registered
before it, so the attention output (SDPA by default) is exactly what the model would compute.
Other modules (the vision tower, other models) and calls outside any tap pass straight through.
Taps nest; the innermost callback runs first.
"""
from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from contextvars import ContextVar
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


_TAPS: ContextVar[dict] = ContextVar("vtanalysis_attention_taps", default={})  # module -> callbacks
_INSTALL = threading.Lock()


def _registered(impl: str):
    return ALL_ATTENTION_FUNCTIONS._local_mapping.get(impl) or ALL_ATTENTION_FUNCTIONS._global_mapping.get(impl)


def install_dispatcher(impl: str) -> None:
    """Register the tap dispatcher for attention implementation `impl` (idempotent: once per
    implementation, again only if something else has replaced it since)."""
    if getattr(_registered(impl), "vtanalysis_dispatcher", False):
        return
    with _INSTALL:
        previous = _registered(impl)
        if getattr(previous, "vtanalysis_dispatcher", False):
            return

        def dispatcher(module, query, key, value, attention_mask, *args, **kwargs):
            for callback in reversed(_TAPS.get().get(module, ())):
                callback(module, query, key, attention_mask, kwargs.get("scaling", getattr(module, "scaling", None)))
            fn = previous if previous is not None else _eager_of(module)
            return fn(module, query, key, value, attention_mask, *args, **kwargs)

        dispatcher.vtanalysis_dispatcher = True
        ALL_ATTENTION_FUNCTIONS[impl] = dispatcher


@contextmanager
def tap_attention(callbacks: dict[nn.Module, TapCallback]):
    """Call `callbacks[module](module, query, key, attention_mask, scaling)` before each watched
    attention, for forward passes in the calling context (thread) only.

    Args:
        callbacks: attention modules (e.g. `layer.self_attn` of decoder layers) -> callback.
    """
    for impl in {m.config._attn_implementation for m in callbacks}:
        install_dispatcher(impl)
    current = _TAPS.get()
    token = _TAPS.set({**current, **{m: current.get(m, ()) + (cb,) for m, cb in callbacks.items()}})
    try:
        yield
    finally:
        _TAPS.reset(token)
