"""One file per pruning method. Each file holds the method's docstring (paper, the authors'
repository, file and function, every way ours differs), its pure selection function with shapes,
and at the bottom its plan, chooser and `register(Method(...))`.

Every module in this folder is imported here, so a new method is a new file; methods from
outside the project load through `prune.plugins`.
"""
import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
