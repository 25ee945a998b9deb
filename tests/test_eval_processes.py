"""Evaluation records and several processes (issue 15: `accelerate launch -m vtanalysis eval --out DIR`):
answers written per batch resume after an interruption, and parts answered by several processes merge
into exactly the predictions, FLOPs and accuracy of one process."""
import json

import pytest
from reference import DiesOnCall, NoWait, run_cli

import vtanalysis as vta
from vtanalysis import prune
from vtanalysis.data import shapes
from vtanalysis.data.dataset import read_samples
from vtanalysis.evaluate import evaluate
from vtanalysis.models import tiny
from vtanalysis._core.processes import Processes


@pytest.fixture(scope="module")
def vlm():
    return tiny.build("llava", seed=0)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    shapes.write_dataset(folder, n_images=4, seed=0, progress=False)
    return read_samples(folder)[:10]


def same(a: dict, b: dict):
    assert a["predictions"] == b["predictions"]
    assert (a["accuracy"], a["per_type"]) == (b["accuracy"], b["per_type"])
    assert a["flops_ratio"] == pytest.approx(b["flops_ratio"], rel=1e-12)


def test_interrupted_evaluation_resumes_after_the_last_written_batch(vlm, samples, tmp_path, monkeypatch):
    plain = evaluate(vlm, samples, method="fastv", keep=0.25, batch_size=3, progress=False)
    dies = DiesOnCall(prune.run, 3)
    monkeypatch.setattr(prune, "run", dies)
    with pytest.raises(KeyboardInterrupt):
        evaluate(vlm, samples, method="fastv", keep=0.25, batch_size=3, progress=False, records=tmp_path)
    part = tmp_path / "part-0-of-1.jsonl"
    assert len(part.read_text().splitlines()) == 1 + 6  # settings + two batches of 3
    with open(part, "a") as f:
        f.write('{"index": 6, "id": "half a li')  # a write cut off by the kill
    dies.die_on = None
    resumed = evaluate(vlm, samples, method="fastv", keep=0.25, batch_size=3, progress=False, records=tmp_path)
    assert dies.calls == 3 + 2  # only the last two batches (3 + 1 samples) ran again
    same(resumed, plain)
    assert [json.loads(line)["index"] for line in part.read_text().splitlines()[1:]] == list(range(10))


def test_records_of_another_run_or_damaged_are_refused(vlm, samples, tmp_path):
    evaluate(vlm, samples[:4], method="fastv", keep=0.25, batch_size=2, progress=False, records=tmp_path)
    with pytest.raises(vta.VTAError, match="answers of another run"):
        evaluate(vlm, samples[:4], method="fastv", keep=0.5, batch_size=2, progress=False, records=tmp_path)
    part = tmp_path / "part-0-of-1.jsonl"
    lines = part.read_text().splitlines()
    part.write_text("\n".join([lines[0], "{not json", *lines[2:]]) + "\n")
    with pytest.raises(vta.VTAError, match="corrupt.*delete it"):
        evaluate(vlm, samples[:4], method="fastv", keep=0.25, batch_size=2, progress=False, records=tmp_path)
    with pytest.raises(vta.VTAError, match="needs a records folder"):
        evaluate(vlm, samples, progress=False, processes=Processes(0, 2, NoWait()))


@pytest.mark.parametrize("method,world", [("fastv", 2), ("random", 3)])
def test_parts_of_several_processes_equal_one_process(vlm, samples, tmp_path, method, world):
    """Contiguous parts in rank order (accelerate's split) and per-sample seeds by global index: the
    merged result is one process's, whatever the number of processes."""
    one = evaluate(vlm, samples, method=method, keep=0.25, batch_size=4, progress=False)
    for rank in range(1, world):  # the others before the main one: they find rank 0's part missing
        with pytest.raises(vta.VTAError, match="part-0-of-.* is missing"):
            evaluate(vlm, samples, method=method, keep=0.25, batch_size=4, progress=False, records=tmp_path,
                     processes=Processes(rank, world, NoWait()))
    merged = evaluate(vlm, samples, method=method, keep=0.25, batch_size=4, progress=False, records=tmp_path,
                      processes=Processes(0, world, NoWait()))
    same(merged, one)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"part-{r}-of-{world}.jsonl" for r in range(world)]


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_evaluates_as_one(tmp_path):
    """`accelerate launch --num_processes 2 -m vtanalysis eval --out DIR` on CPU (gloo) prints the
    accuracy, FLOPs ratio and per-type scores of one process."""
    folder = tmp_path / "data"
    shapes.write_dataset(folder, n_images=4, seed=0, progress=False)
    common = ["eval", "--model", "tiny-llava", "--data", str(folder), "--method", "fastv", "--keep", "0.25",
              "--batch-size", "3", "--no-baselines", "--json"]
    one = run_cli(*common)
    two = run_cli(*common, "--out", str(tmp_path / "records"), processes=2)
    a, b = json.loads(one.stdout), json.loads(two.stdout)  # only the main process prints
    assert (a["accuracy"], a["per_type"], a["samples"]) == (b["accuracy"], b["per_type"], b["samples"])
    assert a["flops_ratio"] == pytest.approx(b["flops_ratio"], rel=1e-12)
    assert (tmp_path / "records" / "fastv-keep0.25" / "part-1-of-2.jsonl").is_file()
