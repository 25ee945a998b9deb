"""`vtanalysis figures` end to end on the demo architecture (random weights; issue 5): every
figure family is written with its numbers, a rerun reuses the cached collections and results."""
import json

import pytest

from vtanalysis.errors import VTAError
from vtanalysis.figures import FIGURES, make_figures

PREFIXES = ("positional_bias", "inflection", "saliency_auc", "t2i_similarity", "coverage", "overlays",
            "accuracy_vs_keep", "causal_horizon", "causal_knockout", "causal_agreement")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from vtanalysis.data import shapes

    folder = tmp_path_factory.mktemp("scenes")
    shapes.write_dataset(folder, 4, seed=0, progress=False)
    return folder


def test_every_figure_is_made_and_reruns_from_cache(demo_untrained, scenes, tmp_path):
    out = tmp_path / "figs"
    made = make_figures(demo_untrained, scenes, out, samples=12, batch_size=6, progress=False, log=lambda *_: None)
    assert list(made) == list(FIGURES)
    names = {p.name for paths in made.values() for p in paths}
    for prefix in PREFIXES:
        assert any(n.startswith(prefix) and n.endswith(".png") for n in names), prefix
        assert any(n.startswith(prefix) and n.endswith(".pdf") for n in names), prefix
        assert any(n.startswith(prefix) and n.endswith((".json", ".csv")) for n in names), prefix
    assert all((out / n).stat().st_size > 0 for n in names)
    listed = json.loads((out / "figures.json").read_text())["files"]
    assert {n for v in listed.values() for n in v} == names
    bias = json.loads((out / "positional_bias.json").read_text())
    assert set(bias["tasks"]) == {"color", "count", "exist", "position", "shape", "small"} & set(bias["tasks"])
    assert len(bias["similarity"]) == len(bias["tasks"])
    acc = (out / "accuracy_vs_keep.csv").read_text().splitlines()
    assert acc[0].startswith("method,keep,accuracy,acc_low,acc_high,n,flops_ratio") and acc[1].startswith("none,1.0")
    findings = json.loads((out / "findings.json").read_text())
    assert {r["source"] for r in findings} >= {"AdaptPrune Tab. 1", "AdaptPrune Tab. 4", "AdaFV Tab. 8", "AdaptInfer",
                                               "2411.18620", "2512.07580"}
    knock = json.loads((out / "causal_knockout.json").read_text())
    assert set(knock["effect"]) == {"image->question", "image->last", "question->last", "image->text",
                                    "object->question"}  # the scenes carry object masks
    assert all(len(rows) == knock["samples"] for rows in knock["effect"].values())
    assert any(r is None for r in knock["effect"]["object->question"])  # count questions name no object
    assert all(r["verdict"] in ("reproduced", "refuted", "inconclusive", "not testable") for r in findings)
    assert (out / "findings.md").read_text().count("\n| ") == len(findings) + 1  # header + one line per claim

    cache = sorted((out / "cache").glob("*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in cache}
    make_figures(demo_untrained, scenes, out, only=["saliency_auc", "accuracy_vs_keep"], samples=12, batch_size=6,
                 progress=False, log=lambda *_: None)
    assert {p: p.stat().st_mtime_ns for p in cache} == stamps  # reused, not recomputed


def test_figure_errors(demo_untrained, scenes, tmp_path):
    with pytest.raises(VTAError, match="unknown figure"):
        make_figures(demo_untrained, scenes, tmp_path, only=["heatmap"], progress=False)
    with pytest.raises(VTAError, match="samples"):
        make_figures(demo_untrained, scenes, tmp_path, samples=0, progress=False)


def test_cli_only_one_figure(tmp_path):
    from typer.testing import CliRunner

    from vtanalysis.cli import app

    out = tmp_path / "figs"
    result = CliRunner().invoke(app, ["figures", "--model", "tiny-llava", "--samples", "6", "--out", str(out),
                                      "--only", "inflection"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} >= {"inflection.png", "inflection.pdf", "inflection.json", "figures.json"}
    assert not (out / "positional_bias.png").exists()
    bad = CliRunner().invoke(app, ["figures", "--model", "tiny-llava", "--out", str(out), "--only", "heatmap"])
    assert bad.exit_code == 2 and "unknown figure" in bad.output


def test_a_model_compared_with_itself_finds_only_the_controls_change_points(tmp_path):
    """Issue 42, item 4: with `control=` the same weights, the control's curves are the model's and every
    change point found is marked as the control's, so findings.md counts none of them as an inflection
    layer (on the demo, with its own weights loaded twice)."""
    from vtanalysis import load_vlm
    from vtanalysis.data import shapes

    data = tmp_path / "data"
    shapes.write_dataset(data, n_images=8, seed=0, progress=False)
    make_figures(load_vlm("demo"), data, tmp_path / "out", only=["inflection"], samples=24, progress=False,
                 control=load_vlm("demo"))
    result = json.loads((tmp_path / "out" / "inflection.json").read_text())
    assert result["control"]["name"] == "demo" and result["control"]["curves"] == result["curves"]
    assert result["inflections"] and all(c["in_control"] for c in result["inflections"])
    assert all("error" in s for s in result["schedules"].values())  # no own change point: no schedule
