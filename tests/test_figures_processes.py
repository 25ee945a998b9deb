"""`vtanalysis figures` over several processes (issue 15: `accelerate launch -m vtanalysis figures`):
each process computes its part of the statistics behind the figures (positional-bias maps,
inflection curves, saliency AUC, evaluations), and the figures' numbers equal a one-process run."""
import csv
import json

import pytest
from reference import NoWait, run_cli

import vtanalysis as vta
from vtanalysis import figures
from vtanalysis.analysis import saliency
from vtanalysis.experiments.context import Context
from vtanalysis.experiments.statistics import scores as _scores
from vtanalysis._core.processes import Processes


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from vtanalysis.data import shapes

    folder = tmp_path_factory.mktemp("scenes")
    shapes.write_dataset(folder, 4, seed=0, progress=False)
    return folder


def test_scored_parts_merge_into_the_one_process_scores_and_survive_a_failed_process(
        demo_untrained, scenes, tmp_path, monkeypatch):
    """AdaFV Fig. 2 / 4 statistics: rows of the parts in rank order and means over them equal one
    process's; a part already written is not scored again when the run is relaunched."""
    one = _scores(Context(demo_untrained, scenes, tmp_path / "one", 10, 4, False))
    calls = []
    real = saliency.score_against_masks
    monkeypatch.setattr(saliency, "score_against_masks", lambda vlm, samples, *a, **k: calls.append(len(samples))
                        or real(vlm, samples, *a, **k))
    ctx = lambda rank: Context(demo_untrained, scenes, tmp_path / "two", 10, 4, False,  # noqa: E731
                               Processes(rank, 2, NoWait()))
    with pytest.raises(vta.VTAError, match="part-0-of-2.json missing.*launch again with 2 processes"):
        _scores(ctx(1))  # process 1 finishes its part; process 0 died before writing its own
    two = _scores(ctx(0))  # the relaunch: process 0 scores its part, process 1's is read back
    assert len(calls) == 2  # one part each (of 5 samples, those with an object mask)
    assert [r["id"] for r in two["rows"]] == [r["id"] for r in one["rows"]]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "scores"} for r in rows]  # noqa: E731
    assert strip(two["rows"]) == strip(one["rows"])  # AUCs and token counts
    for a, b in zip(two["rows"], one["rows"]):  # batches differ (parts of 5, batches of 4): float noise only
        for rule in a["scores"]:
            assert a["scores"][rule] == pytest.approx(b["scores"][rule], abs=1e-6)
    assert two["mean"] == pytest.approx(one["mean"], rel=1e-12)
    assert _scores(ctx(1)) == two and len(calls) == 2  # now cached for every process


def _numbers(folder):
    out = {name: json.loads((folder / f"{name}.json").read_text()) for name in ("positional_bias", "inflection")}
    for name in ("saliency_auc", "accuracy_vs_keep"):
        rows = list(csv.DictReader(open(folder / f"{name}.csv")))
        out[name] = [{k: v for k, v in r.items() if k not in ("prefill_s", "time_ratio")} for r in rows]
    return out


def _close(a, b, path=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        # the positional-bias similarity is a correlation of maps, near 0 on the 16-layer demo: launched
        # processes run their forward on one thread each (torchrun's OMP_NUM_THREADS=1), and float32 noise
        # of 1e-7 in the maps cancels there into a few 1e-6 (measured 3e-6); a merging error moves it far more
        assert a == pytest.approx(b, rel=1e-6, abs=1e-5 if "/similarity" in path else 1e-9), path
    else:
        assert a == b, path


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_draws_the_one_process_figures(tmp_path):
    """`accelerate launch --num_processes 2 -m vtanalysis figures` on CPU (gloo): positional-bias maps
    (AdaptPrune Fig. 2), inflection curves (AdaptInfer), saliency AUC (AdaFV Fig. 2) and accuracy
    against FLOPs equal one process's (sums merged in float64: to 1e-6, the maps' cross-task correlation to
1e-5 absolute; records and AUCs exactly)."""
    common = ["figures", "--model", "demo", "--samples", "12", "--batch-size", "6", "--only", "positional_bias",
              "--only", "inflection", "--only", "saliency_auc", "--only", "accuracy_vs_keep"]
    run_cli(*common, "--out", str(tmp_path / "one"))
    two = run_cli(*common, "--out", str(tmp_path / "two"), processes=2)
    assert two.stdout.count("positional_bias:") == 1  # the main process draws and prints
    assert (tmp_path / "two" / "cache" / "collection_all" / "shard-1-of-2").is_dir()
    one, two = _numbers(tmp_path / "one"), _numbers(tmp_path / "two")
    assert two["saliency_auc"] == one["saliency_auc"] and two["accuracy_vs_keep"] == one["accuracy_vs_keep"]
    _close(two["positional_bias"], one["positional_bias"])
    _close(two["inflection"], one["inflection"])
