"""The figure registry: `@figure` adds a drawing function under its name, so the CLI, its help and
the docs list exactly the figures that exist (`names()`, `FIGURES`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import VTAError


@dataclass(frozen=True)
class Figure:
    """A registered figure.

    Attributes:
        name: what `--only` takes; the files it writes start with it.
        draw: draw(ctx: Context) -> [paths written] (png, pdf and the numbers behind the figure).
        statistics: statistics(ctx) computing (and caching) what `draw` reads; under several
            processes every process runs it before the main one draws. None: nothing to share.
        summary: the first line of `draw`'s docstring (CLI help and docs).
    """
    name: str
    draw: Callable
    statistics: Callable | None
    summary: str


FIGURES: dict[str, Figure] = {}


def figure(name: str | None = None, *, statistics: Callable | None = None):
    """Register the decorated `draw(ctx) -> [paths]` as a figure (default name: the function's)."""
    def register(draw: Callable) -> Callable:
        key = name or draw.__name__
        if key in FIGURES:
            raise VTAError(f"a figure named '{key}' is already registered; pick another name.")
        doc = (draw.__doc__ or "").strip().splitlines()
        FIGURES[key] = Figure(key, draw, statistics, doc[0] if doc else "")
        return draw
    return register


def names() -> list[str]:
    """Every registered figure's name, in the order they are drawn."""
    return list(FIGURES)
