"""The selection rules stand alone (vLLM plugin issue 40): `vtanalysis/rules/` imports torch, the
standard library and its own modules only, so the `vtanalysis-vllm` distribution ships that folder
under vLLM's torch and calls the very functions `vtanalysis.prune` runs (one definition of each)."""
import ast
import subprocess
import sys
from pathlib import Path

import torch

import vtanalysis.rules
from vtanalysis.rules import budget, divprune, lattice, topk, visionzip

RULES = Path(vtanalysis.rules.__file__).parent


def test_rules_import_nothing_but_torch_the_stdlib_and_each_other():
    for path in RULES.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    assert node.level == 1, f"{path.name} imports from outside rules/: level {node.level}"
                    continue
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top == "torch" or top == "__future__" or top in sys.stdlib_module_names, \
                    f"{path.name} imports {name}"


def test_the_folder_loads_as_another_package_without_vtanalysis_or_transformers(tmp_path):
    """Loaded under another name (as the plugin's wheel holds it), the rules run and neither
    vtanalysis nor transformers is imported."""
    (tmp_path / "elsewhere").symlink_to(RULES)
    code = ("import sys; from elsewhere import budget, divprune, lattice, topk, visionzip; import torch; "
            "x = torch.randn(20, 8); assert len(divprune.divprune(x, 5)) == 5; "
            "assert budget.keep_count(0.25, 576, 'round') == 144; "
            "assert not {'vtanalysis', 'transformers'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)


def test_the_engine_runs_these_very_functions():
    """One definition: the methods' modules hold the rules' function objects, not copies."""
    modules = sys.modules
    import vtanalysis.prune  # noqa: F401 (registers the methods)
    methods = "vtanalysis.prune.methods."
    assert modules[methods + "divprune"].divprune is divprune.divprune
    assert modules[methods + "fastv"].select is topk.top_k
    assert modules[methods + "visionzip"].select is visionzip.select
    assert modules[methods + "visionzip"].merge is visionzip.merge
    assert modules[methods + "baselines"].lattice is lattice.lattice
    assert modules[methods + "baselines"].pool_blocks is lattice.pool_blocks


def test_keep_count_errors_become_the_package_error():
    from vtanalysis.errors import VTAError
    from vtanalysis.prune import keep_count
    for bad in (0.0, 1.5, 0, True, "a"):
        try:
            keep_count(bad, 10)
        except VTAError as e:
            assert "keep" in str(e)
        else:
            raise AssertionError(f"keep={bad!r} accepted")
    assert keep_count(0.1, 576, "round") == budget.keep_count(0.1, 576, "round") == 58
    assert keep_count(0.1, 576) == 57 and torch.equal(topk.top_k(torch.tensor([1., 3., 2.]), 2), torch.tensor([1, 2]))
