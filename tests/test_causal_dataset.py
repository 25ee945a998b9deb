"""`vtanalysis causal` (issue 39 part 6): importance maps, agreement with the oracle and knockout over
a dataset folder, one JSON part per batch, resumable like `collect`."""
import json
import subprocess
import sys

import pytest

from vtanalysis import VTAError
from vtanalysis.causal.dataset import EDGE_SETS, analyse
from vtanalysis.data import shapes
from vtanalysis.models import tiny


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    shapes.write_dataset(folder, 2, seed=0, progress=False)
    return folder


def test_a_run_writes_its_tables_and_resumes_from_its_parts(scenes, tmp_path):
    vlm = tiny.build("llava", seed=1, num_layers=4)
    common = dict(methods=("fastv", "pool"), keep=0.25, knockout=True, batch_size=2, limit=5, progress=False)
    summary = analyse(vlm, scenes, tmp_path, **common)
    parts = sorted((tmp_path / "parts").glob("batch-*.json"))
    assert len(parts) == 3 and summary["samples"] == 5
    lines = [json.loads(line) for line in (tmp_path / "importance.jsonl").read_text().splitlines()]
    assert [len(r["importance"]) for r in lines] == [r["n_image"] for r in lines] == [64] * 5
    agreement = (tmp_path / "agreement.csv").read_text().splitlines()
    assert agreement[0].startswith("id,method,effect,random,oracle,recall") and len(agreement) == 1 + 5 * 2
    knock = (tmp_path / "knockout.csv").read_text().splitlines()
    assert len(knock) == 1 + 5 * len(EDGE_SETS) * 4  # 4 layers, windows of 1
    assert (tmp_path / "importance.png").stat().st_size > 0
    for m in ("fastv", "pool"):  # the oracle keeps what it finds best: never worse than a method (1e-5)
        assert summary["methods"][m]["oracle"] <= summary["methods"][m]["effect"] + 1e-5

    stamps = {p: p.stat().st_mtime_ns for p in parts}
    parts[1].unlink()  # an interrupted run: one part missing
    again = analyse(vlm, scenes, tmp_path, **common)
    assert {p: p.stat().st_mtime_ns for p in parts if p != parts[1]} == {p: s for p, s in stamps.items() if p != parts[1]}
    assert parts[1].is_file()
    assert again["methods"]["fastv"]["effect"] == pytest.approx(summary["methods"]["fastv"]["effect"], abs=1e-6)


def test_other_settings_in_the_same_folder_and_unknown_methods_are_refused(scenes, tmp_path):
    vlm = tiny.build("llava", seed=1, num_layers=3)
    analyse(vlm, scenes, tmp_path, limit=2, batch_size=2, progress=False)
    with pytest.raises(VTAError, match="other settings \\(layer\\)"):
        analyse(vlm, scenes, tmp_path, layer=1, limit=2, batch_size=2, progress=False)
    with pytest.raises(VTAError, match="nonexistent"):
        analyse(vlm, scenes, tmp_path / "b", methods=("nonexistent",), limit=2, progress=False)


def test_the_cli_explains_the_demo_answers(tmp_path):
    out = subprocess.run([sys.executable, "-m", "vtanalysis", "causal", "--out", str(tmp_path), "--limit", "2",
                          "--method", "fastv"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "explained 2 answers" in out.stderr and "fastv: KL" in out.stderr
    assert (tmp_path / "summary.json").is_file()
