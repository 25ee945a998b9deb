"""The main job's one overall progress bar (new-user issue 43): it advances by each figure's expected
seconds, so its ETA is in real time; the weights come from the last run into the same folder, else
from the demo's committed run (`experiments/demo_seconds.json`), which must list every figure."""
import json

from vtanalysis.experiments import make
from vtanalysis.experiments.registry import FIGURES


def test_the_demo_weights_list_every_registered_figure():
    seconds = json.loads(make.DEMO_SECONDS.read_text())["seconds"]
    assert set(seconds) == set(FIGURES), "rerun the main job on the demo and copy figures.json's seconds"
    assert all(v > 0 for v in seconds.values())


def test_an_earlier_run_in_the_folder_wins_and_unknown_figures_get_the_median(tmp_path):
    names = list(FIGURES)
    demo = json.loads(make.DEMO_SECONDS.read_text())["seconds"]
    assert make.expected_seconds(tmp_path, names) == {n: max(float(demo[n]), 0.1) for n in names}
    (tmp_path / "figures.json").write_text(json.dumps({"seconds": {names[0]: 123.0}}))
    assert make.expected_seconds(tmp_path, names)[names[0]] == 123.0
    weights = make.expected_seconds(tmp_path, ["a new figure", names[0]])
    assert weights == {"a new figure": 123.0, names[0]: 123.0}  # the median of the known ones


def test_the_bar_reaches_its_total_and_shows_time_left():
    weights = {"a": 3.0, "b": 1.0}
    bar = make.overall_bar(weights, True)
    bar.set_postfix_str("a")
    bar.update(weights["a"])
    shown = str(bar)
    assert "all figures:  75%" in shown and "left" in shown and "a" in shown
    bar.update(weights["b"])
    assert bar.n == bar.total == 4.0
    bar.close()
