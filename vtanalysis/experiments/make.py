"""`make_figures`: draw the registered figures (`registry.FIGURES`) from one model and one dataset."""
from __future__ import annotations

from pathlib import Path

from .._core.files import output_folder
from .._core.processes import ONE, Processes
from ..errors import VTAError
from . import figures as _figures  # noqa: F401  (registers every figure)
from .context import Context, write_json
from .registry import FIGURES


def make_figures(vlm, data: str | Path, out: str | Path, *, only: list[str] | None = None, samples: int = 200,
                 batch_size: int = 8, progress: bool = True, processes: Processes = ONE,
                 log=print) -> dict[str, list[Path]]:
    """Write the chosen figures (all registered ones by default) and return the files each produced.

    Each figure writes NAME.png, NAME.pdf and the numbers behind it (NAME.json or NAME.csv) into
    `out/`. Expensive intermediate results live in `out/cache/` (attention collections resume;
    scored and evaluated results are reused when their parameters match), so a rerun is fast and
    `only=[NAME]` redoes one figure.

    processes: with several (`accelerate launch -m vtanalysis figures`), every process computes its
        part of each figure's statistics (collections, scores, evaluations; merged as in one
        process), then the main process draws the figures and returns them; the others return {}."""
    names = list(only) if only else list(FIGURES)
    unknown = set(names) - set(FIGURES)
    if unknown:
        raise VTAError(f"unknown figure(s) {sorted(unknown)}; figures: {', '.join(FIGURES)}.")
    if samples < 1:
        raise VTAError(f"--samples must be >= 1, got {samples}.")
    out = output_folder(out)
    ctx = Context(vlm, Path(data), out, samples, batch_size, progress, processes)
    drawing = ctx.alone()
    made = {}
    for name in names:
        fig = FIGURES[name]
        if processes.main:
            log(f"[figures] {name}")
        if processes.world > 1 and fig.statistics is not None:
            fig.statistics(ctx)
        if processes.main:
            made[name] = fig.draw(drawing)
    if not processes.main:
        return made
    write_json(out / "figures.json", {"model": vlm.name, "data": str(data), "samples": samples,
                                      "files": {k: [p.name for p in v] for k, v in made.items()}})
    return made
