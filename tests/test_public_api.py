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
    mine = prune.Method("centre-test", "the middle image tokens", "llm", (), choose_centre,
                        prune.methods_module.single_stage(2))
    prune.register(mine)
    try:
        assert "centre-test" in prune.methods() and prune.get("centre-test").knobs == ["layer"]
        vlm = vta.models.tiny.build("llava", seed=1, num_layers=4)
        batch = vlm.prepare(images[:1], QUESTIONS[:1])
        n = batch.layouts[0].n_image_tokens
        res = prune.run(vlm, batch, "centre-test", 4, layer=1, max_new_tokens=2)
        assert res.stage_layers == [1] and res.kept[0][0].tolist() == list(range(n // 2 - 2, n // 2 + 2))
    finally:
        prune.methods_module._REGISTRY.pop("centre-test")


def test_importing_the_library_leaves_the_matplotlib_backend_alone():
    code = ("import matplotlib; matplotlib.use('svg'); import vtanalysis as vta, vtanalysis.figures, "
            "vtanalysis.inspection; vta.viz; assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-1500:]
