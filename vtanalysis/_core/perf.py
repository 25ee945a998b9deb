"""Counting what makes GPU inference slow, on any device: host round trips and dispatched ops.

A 7B prefill of a few hundred tokens on a GPU is launch-bound: every dispatched aten op is one
kernel launch, and every host round trip (`item`, `tolist`, `cpu`, a tensor's truth value,
`nonzero`, a tensor built from a Python list) stalls the stream until the device catches up.
Both can be counted without a GPU, which is how the tests guard the engine's speed on CPU:

    with HostRoundTrips() as trips:
        prune.run(vlm, batch, "fastv", 0.1, max_new_tokens=1)
    trips.count, trips.sites        # round trips made by vtanalysis' own code, and where

    with DispatchCounter(vlm.decoder_layers) as ops:
        vlm.model(**inputs)
    ops.per_layer                   # aten ops dispatched inside each decoder layer's forward

Neither is thread-safe (both patch process-wide state while active); they are measuring tools
for tests and benchmarks, not for production runs.
"""
from __future__ import annotations

import collections
import contextlib
import os
import sys
import threading

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..errors import VTAError
from .files import PACKAGE_ROOT
from .scoped import scoped

_PACKAGE = str(PACKAGE_ROOT)
_TORCH = os.path.dirname(os.path.abspath(torch.__file__))

# aten ops that wait for the device: scalar reads and ops whose output size depends on the data
_SYNC_OPS = {"_local_scalar_dense", "is_nonzero", "item", "nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_dim",
             "unique_consecutive", "bincount", "repeat_interleave"}
# Python-level calls that read device memory on the host (invisible to the dispatcher on CPU)
_TENSOR_METHODS = ("tolist", "numpy", "cpu")


def _project_site(depth: int = 2) -> str | None:
    """'file:line' of the first caller outside torch, if that caller is vtanalysis' own code."""
    frame = sys._getframe(depth)
    while frame is not None and (frame.f_code.co_filename.startswith(_TORCH) or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    if frame is None:
        return None
    path = frame.f_code.co_filename
    if not path.startswith(_PACKAGE):
        return None
    return f"{os.path.relpath(path, _PACKAGE)}:{frame.f_lineno}"


def _is_sync(func, args) -> bool:
    name = func._schema.name.split("::")[-1]
    if name in _SYNC_OPS:
        return True
    if name == "lift_fresh":  # torch.tensor(list); a 0-dim one is a Python scalar passed along, no copy
        return args[0].dim() > 0
    if name in ("index", "index_put", "index_put_"):  # boolean-mask indexing hides a nonzero
        return any(isinstance(t, torch.Tensor) and t.dtype == torch.bool
                   for t in (args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()))
    return False


@contextlib.contextmanager
def deliberate_sync(device: torch.device):
    """Mark a host round trip the code means to make (e.g. a loop's stopping check), so a run under
    `torch.cuda.set_sync_debug_mode("error")` still flags every other one."""
    if device.type != "cuda" or torch.cuda.get_sync_debug_mode() == 0:
        yield
        return
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(mode)


_COUNTING_LOCK = threading.Lock()
_COUNTING_THREAD, _COUNTING_DEPTH = None, 0  # the thread with active HostRoundTrips, and how many


class HostRoundTrips(TorchDispatchMode):
    """Count the host round trips that vtanalysis' own code makes while active.

    A measuring tool for one thread at a time: while active it patches a few `torch.Tensor`
    methods process-wide (`item`, `tolist`, ...), so calls from other threads would count too;
    entering one while another thread has one active is an error.

    Args:
        within: count only while this module's forward runs (e.g. the language model, to count a
            prefill's round trips without the setup before it and the result built after it).
    Attributes:
        count: total round trips.
        sites: Counter of 'module.py:line' -> round trips made there.
    """

    def __init__(self, within: torch.nn.Module | None = None):
        super().__init__()
        self.sites: collections.Counter = collections.Counter()
        self.within = within
        self._active = within is None
        self._saved = {}

    def _count(self, site: str | None) -> None:
        if site is not None and self._active:
            self.sites[site] += 1

    def _counting_within(self, forward, *args, **kwargs):
        """`within`'s forward, counted; counting stops however it ends (`prune.select` stops a
        prefill with an exception once it has chosen)."""
        self._active = True
        try:
            return forward(*args, **kwargs)
        finally:
            self._active = False

    @property
    def count(self) -> int:
        return sum(self.sites.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self._active and _is_sync(func, args):
            self._count(_project_site())
        return func(*args, **(kwargs or {}))

    def _counting(self, original):
        def method(*args, **kwargs):
            if self._active:
                self._count(_project_site())
            return original(*args, **kwargs)
        return method

    def __enter__(self):
        global _COUNTING_THREAD, _COUNTING_DEPTH
        with _COUNTING_LOCK:
            me = threading.get_ident()
            if _COUNTING_THREAD not in (None, me):
                raise VTAError("HostRoundTrips is already counting in another thread; it patches torch.Tensor "
                               "methods process-wide, so count in one thread at a time.")
            _COUNTING_THREAD, _COUNTING_DEPTH = me, _COUNTING_DEPTH + 1
        self._stack = contextlib.ExitStack()
        if self.within is not None:
            self._stack.enter_context(scoped(self.within, "around", self._counting_within))
        for name in _TENSOR_METHODS:
            self._saved[name] = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, self._counting(self._saved[name]))
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for name, original in self._saved.items():
                setattr(torch.Tensor, name, original)
            self._stack.close()
            self._saved = {}
            global _COUNTING_THREAD, _COUNTING_DEPTH
            with _COUNTING_LOCK:
                _COUNTING_DEPTH -= 1
                if _COUNTING_DEPTH == 0:
                    _COUNTING_THREAD = None


class DispatchCounter(TorchDispatchMode):
    """Count the aten ops dispatched inside each watched module's forward (one op ~ one GPU launch;
    view ops such as `view`, `expand` and `transpose` launch nothing and are not counted).

    Args:
        modules: e.g. `vlm.decoder_layers`; ops are attributed to the innermost running one.
    Attributes:
        per_layer: list (one entry per module) of op counts, summed over every call of that module.
        outside: ops dispatched while no watched module was running.
    """

    def __init__(self, modules):
        super().__init__()
        self.modules = list(modules)
        self.per_layer = [0] * len(self.modules)
        self.outside = 0
        self._stack: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            if self._stack:
                self.per_layer[self._stack[-1]] += 1
            else:
                self.outside += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        def leave(*_):
            self._stack.pop()  # returns None: a forward hook's return value would replace the output

        self._hooks = contextlib.ExitStack()
        for i, m in enumerate(self.modules):
            self._hooks.enter_context(scoped(m, "pre", lambda *_, i=i: self._stack.append(i)))
            self._hooks.enter_context(scoped(m, "post", leave))
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._hooks.close()
