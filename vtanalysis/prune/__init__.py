"""Visual-token pruning: one file per method under `prune.methods`, a registry (`Method`, `Need`,
`register`, `get`, `methods`), plan helpers for one's own methods (`prune.plans`), and an engine
that runs them inside real inference (`run`, `select`)."""
from . import plans, registry
from .methods import adafv, adaptinfer, adaptprune, fastv
from .budget import keep_count
from .methods.downsample import downsampled
from .registry import Method, Need, get, methods, register
from .run import RunResult, run, select

methods_module = plans  # the name earlier releases gave the plan helpers (single_stage, pre_stage, scaled_layers)

__all__ = ["Method", "Need", "RunResult", "adafv", "adaptinfer", "adaptprune", "downsampled", "fastv", "get",
           "keep_count", "methods", "methods_module", "plans", "register", "registry", "run", "select"]
