"""`vtanalysis.evaluate` is `vtanalysis.experiments.evaluate`,
exact-match evaluation of pruned inference. The name is kept for earlier releases' imports:
`import vtanalysis.evaluate` returns that very module."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("vtanalysis.experiments.evaluate")
