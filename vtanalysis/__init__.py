"""vtanalysis: record, analyse and prune visual-token attention in vision-language models.

    import vtanalysis as vta
    vlm = vta.load_vlm("demo")
    batch = vlm.prepare([image], ["what color is the triangle ?"])
    rec = vta.record_attention(vlm, batch)
    res = vta.prune.run(vlm, batch, "adaptprune", keep=0.1)

Submodules reachable as attributes (imported on first use): `vta.prune` (methods, `run`,
`select`, `register`), `vta.analysis`, `vta.viz`, `vta.models` (`vta.models.tiny`), `vta.collect`,
`vta.data`, `vta.evaluate`, `vta.experiments` (the figures pipeline), `vta.causal` (ablations:
what the answer depends on), `vta.perf`, `vta.integrations` (the lmms-eval plugin, its offline
task and `report`), `vta.rules` (the pre-LLM methods' selection rules, torch only: the vLLM
plugin runs them too).
"""
import importlib
from typing import TYPE_CHECKING

from .errors import ImageError, LayerError, PromptError, UnsupportedModelError, VTAError, WeightsError

__version__ = "0.1.0"
__all__ = ["AttentionRecord", "record_attention", "VLM", "Grid", "TokenLayout", "VLMInputs", "load_vlm",
           "VTAError", "ImageError", "LayerError", "PromptError", "UnsupportedModelError", "WeightsError",
           "analysis", "causal", "collect", "data", "evaluate", "experiments", "integrations", "models", "perf", "prune",
           "rules", "viz"]
_SUBMODULES = {"analysis", "causal", "collect", "data", "evaluate", "experiments", "integrations", "models", "perf",
               "prune", "rules", "viz"}


# names imported from their submodule on first use: `import vtanalysis` (and so `vtanalysis --help`)
# does not load torch and transformers until something needs them
_LAZY = {"AttentionRecord": "collect", "record_attention": "collect", "VLM": "models", "Grid": "models",
         "TokenLayout": "models", "VLMInputs": "models", "load_vlm": "models"}


if TYPE_CHECKING:  # for type checkers and the API reference (mkdocstrings reads imports, not __getattr__)
    from .collect import AttentionRecord, record_attention
    from .models import VLM, Grid, TokenLayout, VLMInputs, load_vlm


def __getattr__(name):
    if name in _SUBMODULES:  # lazily, so `import vtanalysis` stays light (viz pulls in matplotlib)
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'vtanalysis' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
