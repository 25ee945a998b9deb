"""Every supported family through the faces (issue 18): `vtanalysis families` lists each one, and
the figures CLI and the inspection app run on a tiny model of each."""
import subprocess
import sys
from pathlib import Path

import pytest

from vtanalysis.errors import VTAError
from vtanalysis.figures import make_figures
from vtanalysis.models import registry, tiny

PAGE = Path(__file__).resolve().parents[1] / "apps" / "inspect_tokens.py"


def test_families_command_lists_every_adapter_and_what_it_supports():
    out = subprocess.run([sys.executable, "-m", "vtanalysis", "families"], capture_output=True, text=True,
                         check=True).stdout
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip() and not line.startswith("[")}
    assert set(lines) == {a.family for a in registry.ADAPTERS}
    assert "tiny-llava-onevision" in lines["llava-onevision"] and " received " in lines["llava-onevision"]
    assert "M-RoPE" in lines["qwen2-vl"] and "fastervlm" in out
    assert "tiny-internvl" in lines["internvl"] and " no " in lines["internvl"]
    assert "images both ways" in lines["gemma3"] and "causal" in lines["internvl"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from vtanalysis.data import shapes

    folder = tmp_path_factory.mktemp("scenes")
    shapes.write_dataset(folder, 3, seed=0, progress=False)
    return folder


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_figures_run_on_a_tiny_model_of_each_family(family, scenes, tmp_path):
    vlm = tiny.build(family, seed=0)
    figures = dict(samples=6, batch_size=3, progress=False, log=lambda *_: None)
    made = make_figures(vlm, scenes, tmp_path, only=["positional_bias", "inflection", "overlays"], **figures)
    assert all(p.is_file() for paths in made.values() for p in paths)
    if family in ("qwen2-vl", "qwen3-vl"):  # 96 px scenes make a 3 x 3 merged grid: no token is half inside an object
        with pytest.raises(VTAError, match="none of the 6 samples has an image token more than 50 % inside"):
            make_figures(vlm, scenes, tmp_path, only=["saliency_auc"], **figures)
        return
    make_figures(vlm, scenes, tmp_path, only=["saliency_auc"], **figures)
    rules = (tmp_path / "saliency_auc.csv").read_text().splitlines()[0]
    assert ("cls/auc" in rules) == vlm.adapter.has_cls  # [CLS] saliency only where the tower has one


@pytest.mark.parametrize("name", tiny.NAMES)
def test_app_runs_on_a_tiny_model_of_each_family(name):
    testing = pytest.importorskip("streamlit.testing.v1")
    at = testing.AppTest.from_file(str(PAGE), default_timeout=600)
    at.run()
    at.text_input(key="model").set_value(name).run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    assert [m.value for m in at.markdown if m.value.startswith("**Kept per stage:**")]
