"""The method contract (layout issue 41): one self-registering file per method, a keyword-only
`Method` whose fields `register` checks, choosers whose broken results are named errors, and a
new method added by one file (in the methods folder, or through an entry point)."""
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import vtanalysis
from conftest import QUESTIONS
from vtanalysis import prune
from vtanalysis.errors import MethodError, VTAError
from vtanalysis.models import tiny

# Every method the project ships: a method lost in a move (a file not imported, a registration
# dropped) or added without a file fails here.
SHIPPED = {
    "adafv", "adafv-fixed", "adafv-t2i", "adaptinfer", "adaptprune", "adaptprune-correction", "adaptprune-distance",
    "avgpool-3x3", "cdpruner", "dart", "divprune", "downsample", "fastervlm", "fastv", "fitprune", "last-k", "max-3x3",
    "none", "pool", "pyramiddrop", "random", "random-3x3", "scope", "skip", "sparsevlm", "uniform", "visionzip",
    "vispruner", "vtw",
}


def first(inputs, keep, stage):
    return torch.arange(keep, device=inputs.columns.device)


def method(**fields):
    base = dict(name="registry-test", summary="test", where="llm", needs=(), choose=first,
                plan=prune.plans.single_stage(1))
    return prune.Method(**{**base, **fields})


def test_the_shipped_methods_are_registered():
    assert set(prune.methods()) == SHIPPED


def test_needs_are_need_members_documenting_their_field():
    assert prune.get("adaptprune").needs == (prune.Need.LAST_ROW, prune.Need.KEYS)
    assert "keys" in prune.get("adaptprune").needs  # the engine's string checks keep working
    for need in prune.Need:
        assert f"{need.name}:" in prune.Need.__doc__, f"Need.{need.name} is not documented"


def test_method_fields_are_keyword_only():
    with pytest.raises(TypeError):
        prune.Method("x", "y", "llm", (), first, prune.plans.single_stage(1))


@pytest.mark.parametrize("fields, says", [
    (dict(needs=("last_rows",)), "unknown needs 'last_rows'"),
    (dict(where="inside"), "where='inside'"),
    (dict(plan=lambda vlm, n_image: []), "plan must be callable as plan(vlm, n_image, keep"),
    (dict(choose=lambda inputs: None), "choose must be callable as choose(inputs, keep, stage"),
    (dict(choose_knobs=("seed",)), "choose takes no keyword 'seed'"),
    (dict(ordered=True), "ordered=True is for pre-LLM methods"),
    (dict(positions="shifted"), "positions='shifted'"),
])
def test_register_refuses_a_malformed_method_naming_it(fields, says):
    with pytest.raises(MethodError, match="method 'registry-test'") as err:
        prune.register(method(**fields))
    assert says in str(err.value)
    assert "registry-test" not in prune.registry._REGISTRY


def test_register_refuses_a_second_method_under_a_taken_name():
    with pytest.raises(MethodError, match="'fastv' is already registered"):
        prune.register(method(name="fastv"))
    assert prune.get("fastv").summary.startswith("FastV")


@pytest.mark.parametrize("choose, says", [
    (lambda inputs, keep, stage: torch.arange(keep + 1, device=inputs.columns.device), "returned shape"),
    (lambda inputs, keep, stage: torch.arange(keep, device=inputs.columns.device).float(), "LongTensor"),
    (lambda inputs, keep, stage: torch.zeros(keep, dtype=torch.long, device=inputs.columns.device), "twice"),
])
def test_a_chooser_that_breaks_its_contract_is_a_named_error(images, choose, says):
    prune.register(method(choose=choose))
    try:
        vlm = tiny.build("llava", seed=1, num_layers=3)
        batch = vlm.prepare(images[:1], QUESTIONS[:1])
        with pytest.raises(MethodError, match="method 'registry-test'") as err:
            prune.run(vlm, batch, "registry-test", 4, max_new_tokens=1)
        assert says in str(err.value)
        assert isinstance(err.value, VTAError)
    finally:
        prune.registry._REGISTRY.pop("registry-test", None)


def test_select_takes_the_arguments_of_run_and_the_old_order_with_a_warning(images):
    vlm = tiny.build("llava", seed=3, num_layers=4)
    batch = vlm.prepare(images[:2], QUESTIONS[:2])
    new = prune.select(vlm, batch, "fastv", keep=10)
    with pytest.warns(DeprecationWarning, match="prune.select"):
        old = prune.select("fastv", vlm, batch, keep=10)
    assert all(torch.equal(a, b) for a, b in zip(new[0], old[0]))
    assert new[0][0].tolist() == prune.run(vlm, batch, "fastv", 10, max_new_tokens=1).kept[0][0].tolist()



@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
def test_select_stops_after_the_last_stage_and_keeps_what_run_keeps(family, images):
    """`select` ends the prefill once the last stage has chosen; every registered method must still
    select exactly what a full `run` keeps (stage by stage, sample by sample), and a layer after
    the last stage must not run."""
    vlm = tiny.build(family, seed=3, num_layers=6)
    batch = vlm.prepare(images[:2], QUESTIONS[:2])
    last = vlm.decoder_layers[-1]
    compared = 0
    for name in prune.methods():
        try:
            full = prune.run(vlm, batch, name, 0.3, max_new_tokens=1).kept
        except VTAError:  # a method that refuses this family or budget
            continue
        calls = []
        handle = last.register_forward_hook(lambda *_: calls.append(1))
        try:
            chosen = prune.select(vlm, batch, name, 0.3)
        finally:
            handle.remove()
        assert [[c.tolist() for c in stage] for stage in chosen] == [[c.tolist() for c in stage] for stage in full], name
        assert not calls or not chosen, name  # nothing pruned: the plain prefill ran through
        compared += 1
    assert compared >= 15

TOY = '''
"""Toy: the last image tokens (a test's method, one file)."""
import torch

from ..plans import single_stage
from ..registry import Method, register


def choose(inputs, keep, stage):
    n = len(inputs.columns)
    return torch.arange(n - keep, n, device=inputs.columns.device)


register(Method(name="toy-last", summary="toy", where="llm", needs=(), choose=choose, plan=single_stage(1)))
'''

RUN_TOY = textwrap.dedent('''
    import vtanalysis as vta
    from PIL import Image
    assert "toy-last" in vta.prune.methods(), vta.prune.methods()
    vlm = vta.models.tiny.build("llava", seed=1, num_layers=3)
    batch = vlm.prepare([Image.new("RGB", (40, 40), "red")], ["what color ?"])
    n = batch.layouts[0].n_image_tokens
    res = vta.prune.run(vlm, batch, "toy-last", 3, max_new_tokens=1)
    assert res.kept[0][0].tolist() == [n - 3, n - 2, n - 1], res.kept
    print("ok")
''')


def run_python(code: str, path: str, cwd: Path) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter importing from `path` first (`cwd`: not the checkout, which `-c` would put first)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd,
                          env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin", "HOME": str(cwd)})


def test_a_new_method_is_one_new_file_in_the_methods_folder(tmp_path):
    """A copy of the package with one file added to prune/methods/ lists and runs the method."""
    package = Path(vtanalysis.__file__).parent
    shutil.copytree(package, tmp_path / "vtanalysis", ignore=shutil.ignore_patterns("__pycache__", "weights"))
    (tmp_path / "vtanalysis" / "prune" / "methods" / "toy_last.py").write_text(TOY)
    out = run_python(RUN_TOY, str(tmp_path), tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_a_new_method_is_one_new_file_through_an_entry_point(tmp_path):
    """An installed package declaring the entry point group "vtanalysis.methods" adds its method."""
    (tmp_path / "toy_methods.py").write_text(TOY.replace("from ..plans", "from vtanalysis.prune.plans")
                                             .replace("from ..registry", "from vtanalysis.prune.registry"))
    info = tmp_path / "toy_methods-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-methods\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[vtanalysis.methods]\ntoy = toy_methods\n")
    site = str(Path(torch.__file__).parent.parent)  # torch, transformers and the project stay importable
    project = str(Path(vtanalysis.__file__).parent.parent)
    out = run_python(RUN_TOY, f"{tmp_path}:{project}:{site}", tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
