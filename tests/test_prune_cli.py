"""The `vtanalysis prune` command and the retained-token overlay."""
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from vtanalysis.cli import app
from vtanalysis.models.layout import Grid
from vtanalysis.viz.overlay import kept_mask

IMAGE = Path(__file__).resolve().parents[1] / "data" / "sample" / "images" / "chelsea.jpg"


def test_kept_mask_places_columns_on_the_grid():
    grid = Grid(0, "tiles", (3, 4), 16, 28)
    mask = kept_mask(grid, [0, 16, 21, 27, 40])  # 0 and 40 lie outside this grid
    want = np.zeros((3, 4), bool)
    want[0, 0] = want[1, 1] = want[2, 3] = True
    assert (mask == want).all()


def test_cli_prune_prints_answer_counts_and_saves_overlay(tmp_path):
    out = tmp_path / "ov.png"
    result = CliRunner().invoke(app, ["prune", "--image", str(IMAGE), "--question", "what color is the cat ?",
                                      "--method", "fastv", "--keep", "16", "--layer", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "stage at layer 1: kept 16 of 144 image tokens" in result.output  # the default model: the demo
    assert "FLOPs ratio" in result.output and "answer (unpruned)" in result.output
    assert out.stat().st_size > 20_000


def test_cli_prune_errors_and_methods_list(tmp_path):
    bad = CliRunner().invoke(app, ["prune", "--image", str(IMAGE), "--question", "q ?", "--method", "nope"])
    assert bad.exit_code == 2 and "Registered methods" in bad.output
    listing = CliRunner().invoke(app, ["methods"])
    assert listing.exit_code == 0 and "adaptprune" in listing.output and "fastv" in listing.output
