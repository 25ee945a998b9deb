"""`load_vlm`: a supported VLM from a Hugging Face id, a local folder, the bundled demo or a tiny
random model, with its device, dtype and weights checked."""
from __future__ import annotations

from pathlib import Path

import torch
import transformers

from ..errors import UnsupportedModelError, VTAError, WeightsError
from . import demo, tiny
from .demo.growth import grow
from .registry import adapter_for
from .vlm import VLM

# the trained demo LLaVAs shipped in the package: the 16-layer grown model, and the 4-layer one it grew from
DEMOS = {"demo": demo.WEIGHTS, "demo-small": demo.SMALL_WEIGHTS}
# `demo` before its fine-tuning (`_demo_before_training`): the control of its layer-wise figures
GROWN_CONTROL = "demo-grown"


def load_vlm(name_or_path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
             attn_implementation: str = "sdpa", strict: bool = True, device_map: str | dict | None = None) -> VLM:
    """Load a supported VLM from a Hugging Face id or a local folder.

    Args:
        name_or_path: a hub id ("llava-hf/llava-1.5-7b-hf"), a local folder, "demo" (the trained
            16-layer demo LLaVA shipped in the package), "demo-small" (the 4-layer demo it was grown
            from: the same processor and image tokens, faster), "demo-grown" (`demo` before its
            fine-tuning, the control of its layer-wise figures), or the name of a bundled tiny random model
            ("tiny-llava", "tiny-llava-next", "tiny-llava-onevision", "tiny-qwen2-vl", "tiny-qwen3-vl",
            "tiny-internvl", "tiny-gemma3").
        device: where to put the model; "auto" spreads it over every visible GPU (device_map="auto").
        dtype: weight dtype; default float32 on CPU, the checkpoint's dtype elsewhere and under a device_map.
        attn_implementation: the model's attention backend ("sdpa" by default).
        strict: refuse a checkpoint whose weights do not match the model (missing, unexpected or
            mismatched in shape): transformers would leave those weights randomly initialised and
            every result would be computed on a broken model. False loads anyway, with a warning.
        device_map: for a model larger than one GPU: `from_pretrained`'s device map ("auto", "balanced",
            or {module name: device}); accelerate places the layers and moves each layer's inputs,
            `device` is not used. Collectors and pruning methods run on such a model (each tensor
            they build goes to the layer that uses it). Checkpoints only, not the bundled tiny models.
    Raises:
        UnsupportedModelError: the config's family has no adapter (the message lists those that do).
        WeightsError: the checkpoint's weights do not match (strict=True).
    """
    name = str(name_or_path)
    if str(device) == "auto":
        device, device_map = "cpu", device_map or "auto"
    device = checked_device(device)
    dtype = checked_dtype(dtype)
    if device_map is not None and name in tiny.NAMES:
        raise VTAError(f"device_map is for checkpoints loaded with from_pretrained; {name!r} is built in memory "
                       "and fits one device: pass device= instead.")
    if name in tiny.NAMES:
        return tiny.build(tiny.NAMES[name], device=device, attn_implementation=attn_implementation)
    if name == GROWN_CONTROL:
        vlm = _demo_before_training()
        vlm.model.to(device=device, dtype=dtype or torch.float32)
        vlm.name = name
        return vlm
    if name in DEMOS:
        folder = DEMOS[name]
        if not demo.available(folder):
            raise UnsupportedModelError(f"the {name} model's weights are missing from {folder}; "
                                        "run `vtanalysis train-demo` to make them.")
        vlm = load_vlm(folder, device=device, dtype=dtype, attn_implementation=attn_implementation, strict=strict,
                       device_map=device_map)
        vlm.name = name
        return vlm
    offline = not Path(name).exists() and not _cached(name) and not hub_reachable()
    if offline:  # say so at once: huggingface_hub would retry for half a minute before failing
        raise UnsupportedModelError(f"cannot load a model from {name!r}: it is not a local folder, the Hugging Face "
                                    "cache has no copy of it, and no Hugging Face hub is reachable from here "
                                    f"({_endpoint()}). Pass a model folder (config.json + weights), download it where "
                                    f"there is network, or use a bundled name: {', '.join(DEMOS)}, {', '.join(tiny.NAMES)}.")
    try:
        config = transformers.AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        where = "a local folder without a usable config.json" if Path(name).exists() else \
            "neither a local folder nor a Hugging Face hub id that can be downloaded from here"
        raise UnsupportedModelError(f"cannot load a model from {name!r}: it is {where} ({type(err).__name__}). "
                                    f"Pass a model folder (config.json + weights), a hub id, or a bundled name: "
                                    f"{', '.join(DEMOS)}, {', '.join(tiny.NAMES)}.") from None
    adapter = adapter_for(config)
    if dtype is None:
        dtype = torch.float32 if torch.device(device).type == "cpu" and device_map is None else "auto"
    model_cls = getattr(transformers, adapter.model_class)
    placed = {} if device_map is None else {"device_map": device_map}
    model, info = model_cls.from_pretrained(name, dtype=dtype, attn_implementation=attn_implementation,
                                            output_loading_info=True, **placed)
    check_loading(name, info, strict)
    if device_map is None:
        model = model.to(device)
    processor = transformers.AutoProcessor.from_pretrained(name)
    return VLM(model, processor, adapter, name)


def checked_device(device) -> torch.device:
    """`device` as a torch.device that exists here, or a `VTAError` naming the choices."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise VTAError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:1', 'mps', or 'auto' "
                       "(spread over every GPU).") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VTAError(f"device {device!r} was asked for but this torch has no usable CUDA device; use 'cpu'.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise VTAError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here (0..).")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise VTAError(f"device {device!r} was asked for but MPS is not available here; use 'cpu'.")
    return dev


def checked_dtype(dtype):
    """None, 'auto', a torch.dtype, or its name ('float16', 'bfloat16'...); anything else a `VTAError`."""
    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)
    raise VTAError(f"unknown dtype {dtype!r}: use e.g. 'float32', 'float16', 'bfloat16' or 'auto'.")


def check_loading(name: str, info: dict, strict: bool = True) -> None:
    """Raise `WeightsError` (or warn, strict=False) when transformers' loading report lists weights
    missing from the checkpoint, unexpected in it, or of another shape. Weights a family ties (the
    LM head to the embeddings) are not reported by transformers, so they are never errors."""
    import warnings

    import transformers

    problems = {kind: list(info.get(key) or []) for kind, key in
                (("missing", "missing_keys"), ("unexpected", "unexpected_keys"), ("of another shape", "mismatched_keys"))}
    problems = {kind: keys for kind, keys in problems.items() if keys}
    if not problems:
        return
    listed = "; ".join(f"{len(keys)} {kind} (e.g. {', '.join(str(k) for k in keys[:3])})" for kind, keys in problems.items())
    message = (f"the checkpoint '{name}' does not match the model transformers {transformers.__version__} builds for it: "
               f"weights {listed}. Loading it would leave those weights at random. Use the transformers release the "
               "checkpoint was saved with (vtanalysis is tested on the range in its README), or convert the "
               "checkpoint's keys; load_vlm(..., strict=False) loads it anyway.")
    if strict:
        raise WeightsError(message)
    warnings.warn(message, stacklevel=3)



def _endpoint() -> str:
    import os

    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _cached(name: str) -> bool:
    """Whether the Hugging Face cache holds `name`'s config (no network asked)."""
    try:
        transformers.AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        return False
    return True


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (HF_ENDPOINT) accepts a connection within `timeout` seconds;
    False at once under HF_HUB_OFFLINE=1."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(_endpoint())
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False


def _demo_before_training() -> VLM:
    """`demo` before its instruction stage: `demo-small`'s decoder grown to 16 layers by `grow` with the
    recorded recipe's copies, noise and seed (each copy writes nothing, so it answers as `demo-small`'s
    decoder), reading `demo`'s vision tower, which that stage kept frozen. Every layer-wise figure of
    `demo` is compared with the same figure of this control: a change point both show comes from how
    the model was grown, not from training."""
    import json

    recipe = json.loads((demo.WEIGHTS / "training.json").read_text())["recipe"]
    grown = grow(load_vlm("demo-small"), recipe["copies"], recipe["copy_noise"], recipe["seed"])
    grown.model.model.vision_tower.load_state_dict(load_vlm("demo").model.model.vision_tower.state_dict())
    grown.model.eval()
    return grown
