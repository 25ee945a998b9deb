"""Several accelerator "devices" on a CPU-only machine, strict about mixing them (issue 15).

A model split over GPUs with `device_map` fails when any op gets tensors from two devices. No GPU
is lent here, so the tests split tiny models over fake devices instead: `OnDevice` wraps a CPU
tensor and reports a device `fakegpu:k` (torch's slot for a device written in Python, with no
kernels: nothing can run there by accident); `FakeDevices`, a dispatch mode, runs every op on the CPU
data, gives the result the device of its inputs (or the `device=` a factory or `.to()` asks for),
and raises as CUDA does when an op mixes devices. As on CUDA, a 0-dim CPU tensor may join any op.

    with FakeDevices():
        model.layers[2:].to("fakegpu:1")      # or accelerate's dispatch_model(model, device_map)
        out = model(**inputs)            # raises on any op that mixes fakegpu:0, fakegpu:1 and CPU tensors
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

FAKE = "fakegpu"
aten = torch.ops.aten


class _Backend:
    """What torch asks of a device module; two devices."""

    def is_initialized(self):
        return True

    def is_available(self):
        return True

    def current_device(self):
        return 0

    def device_count(self):
        return 2

    def _is_in_bad_fork(self):
        return False

    def manual_seed_all(self, seed):
        pass


class MixedDevices(RuntimeError):
    """An op got tensors on two devices (CUDA would raise the same)."""


class OnDevice(torch.Tensor):
    """A CPU tensor `data` that says it lives on `device` (a `fakegpu:k`)."""

    @staticmethod
    def __new__(cls, data: torch.Tensor, device: torch.device):
        out = torch.Tensor._make_wrapper_subclass(cls, data.shape, strides=data.stride(), dtype=data.dtype,
                                                  device=device, requires_grad=data.requires_grad,
                                                  storage_offset=data.storage_offset())
        out.data_ = data
        return out

    def __repr__(self):
        return f"OnDevice({self.data_!r}, device={self.device})"

    def tolist(self):  # a host read, as on CUDA (torch refuses it for subclasses by default)
        return self.data_.tolist()

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return run_op(func, args, kwargs or {})


if torch._C._get_privateuse1_backend_name() != FAKE:  # once per process: torch's backend slot for Python devices
    from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

    _setup_privateuseone_for_python_backend(FAKE, backend_module=_Backend())
    # torch.tensor(data, device=...) allocates below the dispatch modes: give it a labelled CPU tensor
    _LIB = torch.library.Library("aten", "IMPL")
    _LIB.impl("empty_strided", lambda size, stride, dtype=None, layout=None, device=None, pin_memory=None:
              OnDevice(torch.empty_strided(size, stride, dtype=dtype), device), "PrivateUse1")
    _LIB.impl("empty.memory_format", lambda size, dtype=None, layout=None, device=None, pin_memory=None,
              memory_format=None: OnDevice(torch.empty(size, dtype=dtype), device), "PrivateUse1")
    _LIB.impl("_local_scalar_dense", lambda x: x.data_.item(), "PrivateUse1")
    _LIB.impl("_copy_from", lambda src, dst, non_blocking=False: _copy_into(dst, src), "PrivateUse1")


def _copy_into(dst, src):
    dst.data_.copy_(to_cpu(src))
    return dst


CROSS_DEVICE = (aten._to_copy.default, aten.copy_.default)  # the ops that may take two devices


def run_op(func, args, kwargs):
    """Run `func` on the CPU data of its arguments; its tensor results get the inputs' device."""
    seen = set()

    def unwrap(x):
        if isinstance(x, OnDevice):
            seen.add(x.device)
            return x.data_
        if isinstance(x, torch.Tensor) and x.dim() > 0:
            seen.add(x.device)
        return x

    first = args[0] if args else None
    args, kwargs = tree_map(unwrap, (args, kwargs))
    if len(seen) > 1 and func not in CROSS_DEVICE:
        raise MixedDevices(f"{func} got tensors on {sorted(map(str, seen))}")
    target = kwargs.get("device")
    if target is not None:  # a factory or .to(device): make it on the CPU, then label it
        target = torch.device(target)
        kwargs = {**kwargs, "device": "cpu"}
    out = func(*args, **kwargs)
    written = func._schema.arguments[0].alias_info if func._schema.arguments else None
    if written is not None and written.is_write:  # in place: the data of `first` changed, `first` is the result
        return first
    device = target if target is not None else (next(iter(seen)) if seen else None)
    if device is None or device.type != FAKE:
        return out
    with torch.inference_mode(False):  # a view of a weight made under inference_mode: a normal tensor, as on CUDA
        return tree_map(lambda x: OnDevice(x, device) if type(x) is torch.Tensor else x, out)


class FakeDevices(TorchDispatchMode):
    """Within the block, tensors on `fakegpu:k` devices work (on the CPU) and mixing devices raises."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return run_op(func, args, kwargs or {})


def to_cpu(x):
    """A plain CPU tensor of x (OnDevice or not), nested structures mapped."""
    return tree_map(lambda t: t.data_ if isinstance(t, OnDevice) else t, x)


def split(vlm, devices: int = 2, vision_last: bool = False):
    """A copy of `vlm` dispatched by accelerate as `from_pretrained(device_map=...)` does, over
    `devices` fake GPUs: the vision tower, projector and embeddings on the first, the decoder layers
    in equal runs, the final norm, rotary module and LM head on the last (an LM head tied to the
    embeddings stays with them, as accelerate's own maps keep it); `vision_last`: the vision tower and
    projector on the last device instead, away from the embeddings (call inside `FakeDevices`)."""
    import copy

    import accelerate.utils.modeling
    from accelerate import dispatch_model

    from vtanalysis.models.vlm import VLM

    model = copy.deepcopy(vlm.model).requires_grad_(False)
    layers = vlm.adapter.decoder_layers(model)
    names = {m: n for n, m in model.named_modules()}
    prefix, n = names[layers], len(layers)
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight  # one tensor: one device
    last = f"{FAKE}:{devices - 1}"
    vision = last if vision_last else f"{FAKE}:0"
    device_map = {f"{prefix}.{i}": f"{FAKE}:{i * devices // n}" for i in range(n)}

    def place(module, name):  # every module to one device, the decoder layers' ancestors split open
        siblings = any(child is layers for child in module.children())
        for own in module._parameters:  # e.g. LLaVA-NeXT's image_newline
            device_map[f"{name}.{own}" if name else own] = vision
        for child_name, child in module.named_children():
            full = f"{name}.{child_name}" if name else child_name
            if child is layers:
                continue
            if any(m is layers for m in child.modules()):
                place(child, full)
            else:
                if child_name == "lm_head":
                    device_map[full] = f"{FAKE}:0" if tied else last
                elif siblings:  # the language model's own: embeddings first, norm and rotary last
                    device_map[full] = f"{FAKE}:0" if "embed" in child_name else last
                else:
                    device_map[full] = vision

    place(model, "")

    # accelerate empties the device's cache after each move, through torch.accelerator: none here
    accelerate.utils.modeling.clear_device_cache = lambda *a, **k: None
    # the main device (where the top-level hook sends the inputs) fixed: accelerate picks it from a set
    # of the map's devices, which for device names (not GPU indices) follows the hash seed
    dispatch_model(model, device_map, main_device=f"{FAKE}:0",
                   skip_keys=getattr(model, "_skip_keys_device_placement", None))
    for key, device in device_map.items():  # a bare parameter is placed by from_pretrained's loading, not by hooks
        owner, _, attr = key.rpartition(".")
        module = model.get_submodule(owner)
        if attr in module._parameters:
            module._parameters[attr] = torch.nn.Parameter(module._parameters[attr].to(device), requires_grad=False)
    model.hf_device_map = device_map
    return VLM(model, vlm.processor, vlm.adapter, vlm.name)
