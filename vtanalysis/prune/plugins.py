"""Pruning methods from outside the project: modules that call `prune.register` when imported.

A module is loaded when it is named in the environment variable VTA_PLUGINS (comma-separated, e.g.
`VTA_PLUGINS=mylab.methods`), passed to the CLI as `--plugin mylab.methods`, or installed as an
entry point of the group "vtanalysis.methods" (a package's pyproject:
`[project.entry-points."vtanalysis.methods"] mine = "mylab.methods"`). The registry loads them
the first time it is asked for a method, so `prune.run`, `vtanalysis eval`, the figures and the
app all see the same methods.
"""
from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from ..errors import VTAError

ENV = "VTA_PLUGINS"
GROUP = "vtanalysis.methods"
_loaded: set[str] = set()
_entry_points_done = False


def load(modules=()) -> None:
    """Import `modules`, those named in VTA_PLUGINS and the installed entry points (each once)."""
    global _entry_points_done
    named = [m.strip() for m in os.environ.get(ENV, "").split(",") if m.strip()] + list(modules)
    for name in named:
        if name not in _loaded:
            _loaded.add(name)
            try:
                importlib.import_module(name)
            except Exception as err:
                _loaded.discard(name)
                raise VTAError(f"could not import the method plugin '{name}' ({type(err).__name__}: {err}); check "
                               f"that it is importable (on PYTHONPATH or installed), or remove it from {ENV}.") from err
    if _entry_points_done:  # installed packages do not change within a process
        return
    for ep in entry_points(group=GROUP):
        if ep.value not in _loaded:
            _loaded.add(ep.value)
            try:
                ep.load()
            except Exception as err:
                raise VTAError(f"the installed method plugin '{ep.name}' ({ep.value}) failed to load "
                               f"({type(err).__name__}: {err}); fix or uninstall the package that provides it.") from err
    _entry_points_done = True
