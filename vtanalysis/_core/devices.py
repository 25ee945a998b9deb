"""Tensors for a model whose layers sit on several devices (`load_vlm(..., device_map="auto")`).

accelerate moves a module's inputs to the module's device, but an op of ours (a gather of a layer's
queries by our row indices, a mask we pass to layer K) runs wherever its tensors are, and fails
when they are on two devices. So what the collector and the pruning engine build once (on the
model's input device, `VLM.device`) they hand to each layer as a copy on that layer's device, made
once per device (`Copies`). On one device every copy is the tensor itself: nothing is added.
"""
from __future__ import annotations

import torch
from torch import nn


def execution_device(module: nn.Module) -> torch.device:
    """The device `module` computes on: that of accelerate's hook where one is attached (its weights
    may be offloaded to the CPU or disk), else that of its first parameter."""
    hook = getattr(module, "_hf_hook", None)
    for h in getattr(hook, "hooks", None) or [hook]:  # a SequentialHook holds several
        device = getattr(h, "execution_device", None)
        if device is not None and not isinstance(device, dict):
            return torch.device(device)
    return next(module.parameters()).device


def to_device(value, device: torch.device):
    """`value` (a tensor, None, or a tuple / list / dict of them) with every tensor on `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


class Copies:
    """A value (see `to_device`) and its copies on the devices asked for, each made once (on the
    value's own device the "copy" is the value itself: `Tensor.to` returns it)."""

    def __init__(self, value):
        self.value = value
        self._on = {}

    def on(self, device: torch.device):
        if device not in self._on:
            self._on[device] = to_device(self.value, device)
        return self._on[device]
