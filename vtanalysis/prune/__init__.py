"""Visual-token pruning: pure selection functions per method (the execution engine comes next)."""
from . import adafv, adaptinfer, adaptprune, fastv
from .budget import keep_count

__all__ = ["adafv", "adaptinfer", "adaptprune", "fastv", "keep_count"]
