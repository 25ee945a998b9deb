"""The papers' experiment pipeline: the shared `Context` and cache (`context`), the statistics
behind the figures (`statistics`), `evaluate` (exact-match accuracy of pruned inference), the
claims of `findings.md` (`findings`), one file per figure under `figures/` registered with
`@figure` (`registry`), and `make_figures` (`vtanalysis figures`)."""
from .make import make_figures
from .registry import FIGURES, Figure, figure, names

__all__ = ["FIGURES", "Figure", "figure", "make_figures", "names"]
