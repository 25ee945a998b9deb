"""`findings.md`: the papers' testable claims measured, with verdicts (`experiments.findings`)."""
from __future__ import annotations

from pathlib import Path

from ..._core.files import atomic_write
from .. import findings as fd
from ..context import Context, write_json
from ..registry import figure
from ..statistics import findings_rows


@figure(statistics=findings_rows)
def findings(ctx: Context) -> list[Path]:
    """findings.md: each testable claim of the papers, measured on this model, with its verdict."""
    rows = findings_rows(ctx)
    path = atomic_write(ctx.out / "findings.md", lambda tmp: tmp.write_text(fd.markdown(rows, ctx.vlm.name, len(ctx.samples))))
    return [path, write_json(ctx.out / "findings.json", rows)]
