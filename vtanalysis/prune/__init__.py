"""Visual-token pruning: pure selection functions per method, a registry, and an engine that runs
them inside real inference (`run`, `select`)."""
from .methods import adafv, adaptinfer, adaptprune, fastv
from . import registry as methods_module  # plan helpers for one's own methods: single_stage, pre_stage, scaled_layers
from .budget import keep_count
from .methods.downsample import downsampled
from .registry import Method, get, methods, register
from .run import RunResult, run, select

__all__ = ["methods_module", "Method", "RunResult", "adafv", "adaptinfer", "adaptprune", "downsampled", "fastv", "get", "keep_count", "methods",
           "register", "run", "select"]
