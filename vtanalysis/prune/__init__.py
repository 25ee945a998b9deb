"""Visual-token pruning: pure selection functions per method, a registry, and an engine that runs
them inside real inference (`run`, `select`)."""
from . import adafv, adaptinfer, adaptprune, fastv
from .budget import keep_count
from .methods import Method, get, methods, register
from .run import RunResult, run, select

__all__ = ["Method", "RunResult", "adafv", "adaptinfer", "adaptprune", "fastv", "get", "keep_count", "methods",
           "register", "run", "select"]
