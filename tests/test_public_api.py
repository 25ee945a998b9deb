"""The public API a researcher extends (fidelity issue, part 3): `import vtanalysis as vta` reaches
the subpackages; a method of one's own, registered with `prune.register`, runs by name; the
library never chooses a matplotlib backend (only the CLI and the app do)."""
import subprocess
import sys

import torch

import vtanalysis as vta
from conftest import QUESTIONS
from vtanalysis import prune


def test_subpackages_are_reachable_from_the_top():
    assert callable(vta.prune.run) and callable(vta.prune.register) and callable(vta.models.tiny.build)
    assert hasattr(vta.analysis, "inflection") and hasattr(vta.viz, "overlay") and vta.perf.HostRoundTrips


def choose_centre(inputs, keep, stage):
    """Keep the `keep` image tokens nearest the middle of the column order."""
    n = len(inputs.columns)
    order = torch.argsort((torch.arange(n, device=inputs.columns.device) - (n - 1) / 2).abs(), stable=True)
    return order[:keep].sort().values


def test_a_registered_method_runs_by_name(images):
    mine = prune.Method(name="centre-test", summary="the middle image tokens", where="llm", needs=(),
                        choose=choose_centre, plan=prune.plans.single_stage(2))
    prune.register(mine)
    try:
        assert "centre-test" in prune.methods() and prune.get("centre-test").knobs == ["layer"]
        vlm = vta.models.tiny.build("llava", seed=1, num_layers=4)
        batch = vlm.prepare(images[:1], QUESTIONS[:1])
        n = batch.layouts[0].n_image_tokens
        res = prune.run(vlm, batch, "centre-test", 4, layer=1, max_new_tokens=2)
        assert res.stage_layers == [1] and res.kept[0][0].tolist() == list(range(n // 2 - 2, n // 2 + 2))
    finally:
        prune.registry._REGISTRY.pop("centre-test")


def test_importing_the_library_leaves_the_matplotlib_backend_alone():
    code = ("import matplotlib; matplotlib.use('svg'); import vtanalysis as vta, vtanalysis.figures, "
            "vtanalysis.inspection; vta.viz; assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-1500:]


PLUGIN = '''
import torch
from vtanalysis import prune


def choose_first(inputs, keep, stage, offset=0):
    return torch.arange(offset, offset + keep, device=inputs.columns.device)


prune.register(prune.Method(name="first-plugin-test", summary="the first image tokens", where="llm", needs=(),
                            choose=choose_first, plan=prune.plans.single_stage(1), choose_knobs=("offset",)))
'''


def test_plugins_register_methods_for_the_cli_and_the_registry(tmp_path, monkeypatch):
    """A module named by --plugin (or VTA_PLUGINS) registers a method that the CLI lists and runs by
    name, with its options passed as --knob name=value."""
    from typer.testing import CliRunner

    from vtanalysis.cli import app
    from vtanalysis.prune import plugins

    (tmp_path / "my_methods_test.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(plugins.ENV, "")  # restored afterwards: the CLI extends it for the app server
    try:
        listing = CliRunner().invoke(app, ["--plugin", "my_methods_test", "methods"])
        assert listing.exit_code == 0, listing.output
        assert "first-plugin-test" in listing.output and "layer, offset" in listing.output
        image = tmp_path / "img.png"
        import matplotlib.pyplot as plt
        import numpy as np
        plt.imsave(image, np.random.default_rng(0).random((40, 40, 3)))
        ran = CliRunner().invoke(app, ["prune", "--image", str(image), "--question", "what color ?", "--model",
                                       "tiny-llava", "--method", "first-plugin-test", "--keep", "3", "--knob", "offset=2",
                                       "--out", str(tmp_path / "o.png")])
        assert ran.exit_code == 0, ran.output
        assert "kept 3 of" in ran.output
        bad = CliRunner().invoke(app, ["--plugin", "no_such_module_here", "methods"])
        assert bad.exit_code == 2 and "could not import the method plugin 'no_such_module_here'" in bad.output
    finally:
        prune.registry._REGISTRY.pop("first-plugin-test", None)
        plugins._loaded.discard("my_methods_test")
        sys.modules.pop("my_methods_test", None)


def test_an_unknown_option_is_an_error_naming_the_method_options(images):
    vlm = vta.models.tiny.build("llava", seed=1, num_layers=4)
    batch = vlm.prepare(images[:1], QUESTIONS[:1])
    import pytest

    with pytest.raises(vta.VTAError, match=r"method 'fastv' has no option 'layr'; its options: layer"):
        prune.run(vlm, batch, "fastv", 0.5, layr=3)
    assert prune.get("random").knobs == ["layer", "seed"] and prune.get("adafv").knobs == ["dedupe"]


def test_every_lazy_name_is_also_imported_for_static_readers():
    """`vta.load_vlm` and the other lazily imported names are found by `__getattr__` at run time, but
    mkdocstrings (the API reference) and type checkers read import statements only: each lazy name
    must be imported from the same submodule under `if TYPE_CHECKING:` (CI's docs build failed
    when they were not)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(vta))
    guarded = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom):
                    guarded.update({alias.name: stmt.module for alias in stmt.names})
    assert guarded == vta._LAZY
    assert all(getattr(vta, name) is getattr(getattr(vta, module), name) for name, module in guarded.items())
