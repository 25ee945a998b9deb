"""`make_figures`: draw the registered figures (`registry.FIGURES`) from one model and one dataset."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .._core.files import output_folder
from .._core.processes import ONE, Processes
from ..errors import VTAError
from . import figures as _figures  # noqa: F401  (registers every figure)
from .context import Context, write_json
from .registry import FIGURES


def make_figures(vlm, data: str | Path, out: str | Path, *, only: list[str] | None = None, samples: int = 200,
                 batch_size: int = 8, progress: bool = True, processes: Processes = ONE,
                 control=None, log=print) -> dict[str, list[Path]]:
    """Write the chosen figures (all registered ones by default) and return the files each produced.

    Each figure writes NAME.png, NAME.pdf and the numbers behind it (NAME.json or NAME.csv) into
    `out/`. Expensive intermediate results live in `out/cache/` (attention collections resume;
    scored and evaluated results are reused when their parameters match), so a rerun is fast and
    `only=[NAME]` redoes one figure.

    processes: with several (`accelerate launch -m vtanalysis figures`), every process computes its
        part of each figure's statistics (collections, scores, evaluations; merged as in one
        process), then the main process draws the figures and returns them; the others return {}.
    control: a VLM the layer-wise statistics are compared with, on the same samples (e.g. `vlm` before
        its training: `load_vlm("demo-grown")` for the demo). The inflection figure draws its curves
        and change points; findings.md reports a change point the control shares as how the model
        was made, not as a finding."""
    names = list(only) if only else list(FIGURES)
    unknown = set(names) - set(FIGURES)
    if unknown:
        raise VTAError(f"unknown figure(s) {sorted(unknown)}; figures: {', '.join(FIGURES)}.")
    if samples < 1:
        raise VTAError(f"--samples must be >= 1, got {samples}.")
    out = output_folder(out)
    ctx = Context(vlm, Path(data), out, samples, batch_size, progress, processes, control)
    drawing = ctx.alone()
    made, seconds = {}, {}
    weights = expected_seconds(out, names)
    overall = overall_bar(weights, progress and processes.main)
    for name in names:
        fig = FIGURES[name]
        start = time.perf_counter()
        if processes.main:
            overall.set_postfix_str(name)
            if not progress:
                log(f"[figures] {name}")
        if processes.world > 1 and fig.statistics is not None:
            fig.statistics(ctx)
        if processes.main:
            made[name] = fig.draw(drawing)
        seconds[name] = round(time.perf_counter() - start, 1)
        overall.update(weights[name])
    overall.close()
    if not processes.main:
        return made
    write_json(out / "figures.json", {"model": vlm.name, "control": control.name if control is not None else None,
                                      "data": str(data), "samples": samples, "seconds": seconds,
                                      "files": {k: [p.name for p in v] for k, v in made.items()}})
    return made


# each figure's seconds in the committed run of the main job on the bundled demo (2 CPU cores): the
# overall bar's weights on a first run; `figures.json` of an earlier run in the same folder wins
DEMO_SECONDS = Path(__file__).with_name("demo_seconds.json")


def expected_seconds(out: Path, names: list[str]) -> dict[str, float]:
    """The weight of each figure in the overall progress bar: its seconds in the last run into `out`,
    else in the demo's committed run, else the median of the known ones (1 s when none is known).
    Cached work makes a rerun faster than its weights say; the ETA then errs long."""
    known = {}
    for path in (DEMO_SECONDS, out / "figures.json"):  # later sources win
        try:
            known.update(json.loads(path.read_text()).get("seconds", {}))
        except (OSError, ValueError):
            pass
    present = sorted(known[n] for n in names if n in known)
    default = present[len(present) // 2] if present else 1.0
    return {n: max(float(known.get(n, default)), 0.1) for n in names}


def overall_bar(weights: dict[str, float], enabled: bool):
    """One progress bar over every figure, advancing by each figure's expected seconds: its rate and
    ETA are in real time (each evaluation's own bar shows beneath it)."""
    from tqdm.auto import tqdm

    return tqdm(total=round(sum(weights.values()), 1), desc="all figures", unit="s", disable=not enabled,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} elapsed, about {remaining} left{postfix}")
