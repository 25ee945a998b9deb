"""Hooks that act only in the context that set them: safe with threads sharing one model.

The Streamlit app serves every browser session from its own thread with one cached model, and
notebooks and web services do the same. Registering a forward hook, or replacing a module's
`forward`, for the length of one call would act on every other thread's forward pass too. So
vtanalysis installs, once per module and kind, a permanent dispatcher that looks up the
callbacks of the *current* `contextvars` context (each thread has its own; a copied context
carries them into executors), and `scoped(...)` adds a callback to that context only:

    with scoped(module, "pre", fn):      # fn(module, args, kwargs) -> None or (args, kwargs)
    with scoped(module, "post", fn):     # fn(module, args, output) -> None or a new output
    with scoped(module, "around", fn):   # fn(forward, *args, **kwargs) -> output (wraps module.forward)

Outside any `scoped` block a dispatcher calls straight through: the module computes exactly what
the stock module computes. Leaving the block (normally or by an exception) restores the context's
previous callbacks; nothing stays behind. Nested blocks call the innermost callback first
("pre"/"post") or outermost ("around": the innermost wrapper runs closest to the real forward).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from contextvars import ContextVar

from torch import nn

_ACTIVE: ContextVar[dict] = ContextVar("vtanalysis_scoped_callbacks", default={})
_INSTALL = threading.Lock()
KINDS = ("pre", "post", "around")


def _callbacks(module, kind) -> tuple:
    return _ACTIVE.get().get((module, kind), ())


def _pre(module, args, kwargs):
    for fn in reversed(_callbacks(module, "pre")):
        out = fn(module, args, kwargs)
        if out is not None:
            args, kwargs = out
    return args, kwargs


def _post(module, args, output):
    for fn in reversed(_callbacks(module, "post")):
        out = fn(module, args, output)
        if out is not None:
            output = out
    return output


def _around(module, forward):
    def dispatch(*args, **kwargs):
        call = forward
        for fn in _callbacks(module, "around"):  # outermost first, so the innermost wraps `forward` directly
            call = (lambda f, inner: lambda *a, **k: f(inner, *a, **k))(fn, call)
        return call(*args, **kwargs)
    dispatch.vtanalysis_dispatcher = True
    return dispatch


def install(module: nn.Module, kind: str) -> None:
    """Install the dispatcher of `kind` on `module` (once; later calls do nothing)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}.")
    flag = f"_vtanalysis_{kind}_dispatcher"
    if getattr(module, flag, False):
        return
    with _INSTALL:
        if getattr(module, flag, False):
            return
        if kind == "pre":
            module.register_forward_pre_hook(_pre, with_kwargs=True)
        elif kind == "post":
            module.register_forward_hook(_post)
        else:
            module.forward = _around(module, module.forward)
        setattr(module, flag, True)


@contextmanager
def scoped(module: nn.Module, kind: str, fn):
    """Run `fn` as a `kind` callback of `module` for forward passes in this context only."""
    install(module, kind)
    current = _ACTIVE.get()
    key = (module, kind)
    token = _ACTIVE.set({**current, key: current.get(key, ()) + (fn,)})
    try:
        yield
    finally:
        _ACTIVE.reset(token)
