"""`--help` lists what the code registers (layout issue 41): every figure of the `@figure`
registry, every bundled model and every pruning method, never a hand-kept copy that drifts."""
import re

from typer.testing import CliRunner

from vtanalysis import prune
from vtanalysis.cli import app
from vtanalysis.experiments import FIGURES
from vtanalysis.models import tiny


def help_text(*command: str) -> str:
    out = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "400"})
    assert out.exit_code == 0, out.output
    return re.sub(r"[\s│]+", " ", out.output)  # rich boxes wrap and frame long help lines


def test_figures_help_lists_every_registered_figure_and_bundled_model():
    text = help_text("figures")
    assert "positional_bias" in FIGURES and len(FIGURES) >= 8
    for name in [*FIGURES, "demo", *tiny.NAMES]:
        assert name in text, f"{name} missing from `figures --help`"
    assert "{" not in text


def test_prune_and_eval_help_list_every_method():
    for command in ("prune", "eval"):
        text = help_text(command)
        for name in prune.methods():
            assert name in text, f"{name} missing from `{command} --help`"


def test_collect_help_lists_every_tiny_model():
    text = help_text("collect")
    assert all(name in text for name in tiny.NAMES)


def test_methods_listing_keeps_its_columns_apart():
    """Every row of `vtanalysis methods` starts its knobs and its summary at the header's columns,
    however long a method's knobs are (DART has five)."""
    out = CliRunner().invoke(app, ["methods"])
    lines = out.output.splitlines()
    knobs_at, summary_at = lines[0].index("knobs"), lines[0].index("summary")
    for line, name in zip(lines[1:], prune.methods()):
        spec = prune.get(name)
        assert line.startswith(name) and line[knobs_at - 2:knobs_at] == "  " and line[summary_at - 2:summary_at] == "  "
        assert line[summary_at:] == spec.summary


def test_help_and_version_load_neither_torch_nor_transformers():
    """Issue 43: every command took 6-8 s before anything happened, even --help and --version, because
    `import vtanalysis` loaded torch and transformers. They load on first use now. (A command whose
    help lists the registered methods or models still imports them to list them.)"""
    import subprocess
    import sys

    code = ("import sys; from vtanalysis.cli import app\n"
            "for args in (['--version'], ['--help'], ['app', '--help'], ['families', '--help']):\n"
            "    try: app(args, prog_name='vtanalysis')\n"
            "    except SystemExit: pass\n"
            "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "HEAVY []" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
