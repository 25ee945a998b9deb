"""`vtanalysis.figures` is `vtanalysis.experiments`,
the figures pipeline (`make_figures`, `FIGURES`). The name is kept for earlier releases' imports:
`import vtanalysis.figures` returns that very module."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("vtanalysis.experiments")
