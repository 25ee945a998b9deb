"""What an engine asks of the plugin (`hf_overrides={"vtanalysis": {"method": ..., "keep": ...}}`),
checked once, at engine start, with one message naming the problem and the fix.

`keep` means what it means in `vtanalysis.prune`: a ratio in (0, 1] of an image's tokens, or a
count; a ratio becomes a count by the method's authors' rounding (`ROUNDING`, the same as the
method's plan in `vtanalysis.prune`; the plugin's tests compare the two).
"""
from __future__ import annotations

from dataclasses import dataclass

from .rules.budget import KeepError, keep_count

KEY = "vtanalysis"

# the methods served, and how each turns a ratio into a count (vtanalysis.prune's plans)
ROUNDING = {"uniform": "round", "pool": "round", "divprune": "round", "fastervlm": "round", "visionzip": "floor"}

_QUESTION = ("it conditions on the question, and vLLM computes an image's embeddings (embed_multimodal) from the "
             "image alone, before and apart from the prompt (they are cached and shared between requests with "
             "the same image)")
_NOT_YET = ("its rule is not yet among the plugin's (vtanalysis.rules); it runs in vtanalysis.prune, "
            "not in vLLM")
# vtanalysis.prune's other pre-LLM methods, with why each is not served (a test keeps this complete)
REFUSED = {"adafv": _QUESTION, "adafv-fixed": _QUESTION, "adafv-t2i": _QUESTION, "cdpruner": _QUESTION,
           "scope": _NOT_YET, "vispruner": _NOT_YET}


class SettingsError(ValueError):
    """The engine's `vtanalysis` settings are wrong; the message names the fix."""


@dataclass(frozen=True)
class Settings:
    """method: a name from `ROUNDING`; keep: a ratio in (0, 1] or a token count."""

    method: str
    keep: float | int

    def count(self, n: int) -> int:
        """Tokens kept of an image (or crop) of `n` tokens."""
        return self.count_of(self.keep, n)

    def count_of(self, keep: float | int, n: int) -> int:
        """Tokens kept of `n` for a given `keep` (a crop's share of the image's), by the method's rounding."""
        return keep_count(keep, n, ROUNDING[self.method])


def read(hf_config, architecture: str, model_types: tuple[str, ...]) -> Settings:
    """The settings on `hf_config` (from `hf_overrides`), checked against the architecture that
    reads them (`model_types`: the `model_type`s it serves)."""
    if hf_config.model_type not in model_types:
        raise SettingsError(
            f"vtanalysis-vllm: architecture {architecture} serves model_type {' or '.join(model_types)}, "
            f"but this model is {hf_config.model_type!r}, which the plugin does not cover; "
            f"covered: {', '.join(sorted(covered()))}. Remove the 'architectures' override to serve it unpruned.")
    raw = getattr(hf_config, KEY, None)
    if not isinstance(raw, dict) or "method" not in raw or "keep" not in raw:
        raise SettingsError(
            f"vtanalysis-vllm: architecture {architecture} needs its settings in hf_overrides, e.g. "
            f'hf_overrides={{"architectures": ["{architecture}"], "{KEY}": {{"method": "divprune", "keep": 0.25}}}}; '
            f"got {KEY}={raw!r}.")
    method, keep = raw["method"], raw["keep"]
    if method in REFUSED:
        raise SettingsError(f"vtanalysis-vllm: method {method!r} cannot be served: {REFUSED[method]}. "
                            f"Served: {', '.join(ROUNDING)}.")
    if method not in ROUNDING:
        raise SettingsError(f"vtanalysis-vllm: unknown method {method!r}; served: {', '.join(ROUNDING)} "
                            "(the in-LLM methods, e.g. fastv, run inside decoder layers, which vLLM's "
                            "kernels own).")
    settings = Settings(method, keep)
    try:
        settings.count(10 ** 6)  # the range check; the real count is per image
    except KeepError as e:
        raise SettingsError(f"vtanalysis-vllm: {e}") from None
    return settings


def covered() -> dict[str, str]:
    """model_type -> the architecture name that serves it pruned."""
    from . import ARCHITECTURES
    return {model_type: name for name, (_, model_types) in ARCHITECTURES.items() for model_type in model_types}
