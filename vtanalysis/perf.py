"""`vtanalysis.perf` is `vtanalysis._core.perf`,
the dispatch and host round-trip counters. The name is kept for earlier releases' imports:
`import vtanalysis.perf` returns that very module."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("vtanalysis._core.perf")
