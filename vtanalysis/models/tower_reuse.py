"""`TowerReuse`: the vision tower runs once for several generations of one prepared batch.

Evaluating many pruning runs on the same batch (`evaluate.evaluate_many`), or measuring many
ablations of it (`vtanalysis.causal`), hands the model the same processor outputs again and again,
and every pass's vision tower computes the same features from them. Inside `sharing(vlm)`, the
generations that may share them enter `shared_tower(vlm)`: the tower's forward is wrapped (a scoped
"around" callback: this context only, other threads untouched), and a call with the same tensors
(the same objects, or equal ones) and equal other arguments returns the output of the last call,
which computed exactly that. Only what reads nothing inside the tower may share it: a method that
captures the tower's attention or features, or edits the model around it, runs its own tower
(`shareable`).

Only the last call is kept, so at most one batch's tower output is held, whatever the dataset's
size (on a GPU, one batch of a 7B model's features is what generation holds anyway).
"""
from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar

import torch

from .._core.perf import deliberate_sync
from .._core.scoped import scoped


_SHARING: ContextVar["TowerReuse | None"] = ContextVar("vtanalysis_tower_sharing", default=None)


@contextmanager
def sharing(vlm):
    """A block in which `vlm`'s generations that read nothing inside the vision tower (`prune.run` and
    `prune.select` of `shareable` methods, the causal ablations) reuse the tower's output for the
    inputs it last saw. For this thread (context) only; yields the `TowerReuse`."""
    reuse = TowerReuse(vlm)
    token = _SHARING.set(reuse)
    try:
        yield reuse
    finally:
        _SHARING.reset(token)


def shared_tower(vlm):
    """Inside `sharing(vlm)`: the context that lets one generation reuse the tower; else a null context."""
    reuse = _SHARING.get()
    return reuse.active() if reuse is not None and reuse.vlm is vlm else nullcontext()


class TowerReuse:
    """The last vision-tower call of `vlm` and its output, reused while `active()`."""

    def __init__(self, vlm):
        self.vlm = vlm
        self.tower = vlm.adapter.vision_tower(vlm.model)
        self.calls = self.reused = 0  # tower calls seen while active, and how many were answered from the last
        self._last = None  # (args, kwargs, output)

    def active(self):
        """A context in which tower calls with the last call's arguments return its output."""
        if self.tower is None:
            return nullcontext()
        return scoped(self.tower, "around", self._around)

    def _around(self, forward, *args, **kwargs):
        self.calls += 1
        if self._last is not None and _same(self._last[0], args) and _same(self._last[1], kwargs):
            self.reused += 1
            return copy.copy(self._last[2])
        out = forward(*args, **kwargs)
        # callers may set fields of the output object (Qwen2-VL splits its pooler_output in place):
        # each gets its own shallow copy; the tensors are shared, and nothing writes into them
        self._last = (args, kwargs, copy.copy(out))
        return out


def shareable(spec) -> bool:
    """Whether a registered method's runs may share the tower's output: it reads nothing from inside
    the tower (its [CLS] attention, its features) and changes nothing around it (`prepare`)."""
    from ..prune.registry import Need

    return spec.prepare is None and not {Need.CLS, Need.CLS_TOKEN, Need.VISION_FEATURES} & set(spec.needs)


def _same(a, b) -> bool:
    """Tensors: the same object, or equal in shape, dtype, device and every value (anyres families
    rebuild the tower's input from the same pixels on every call: one host round trip then);
    containers: item by item; anything else: equal."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        if a is b:
            return True
        if not (torch.is_tensor(a) and torch.is_tensor(b)) or (a.shape, a.dtype, a.device) != (b.shape, b.dtype, b.device):
            return False
        with deliberate_sync(a.device):
            return bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:  # a type whose == is not a plain truth value: not trusted to be equal
        return False
