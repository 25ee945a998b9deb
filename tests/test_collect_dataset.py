"""Dataset-scale collection: streaming means, atomic checkpoints, resume without loss or double counting."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from reference import DiesOnCall, run_cli
from typer.testing import CliRunner

import vtanalysis as vta
from vtanalysis.cli import app
from vtanalysis.collect import dataset as coll
from vtanalysis.data import read_samples
from vtanalysis.models import tiny

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


@pytest.fixture(scope="module")
def vlm():
    return tiny.build("llava-next")


def ids(out):
    return [json.loads(line)["id"] for line in (out / "samples.jsonl").read_text().splitlines()]


def test_means_equal_the_mean_of_single_records(vlm, tmp_path):
    summary = coll.collect_dataset(vlm, SAMPLE, tmp_path, batch_size=3, limit=5, progress=False)
    assert summary["n_samples"] == 5
    means = load_file(str(tmp_path / "mean_attention.safetensors"))
    samples = read_samples(SAMPLE)[:5]
    recs = [vta.record_attention(vlm, vlm.prepare([s.image], [s.question]))[0] for s in samples]
    want = torch.stack([r.layout.grids[0].to_map(r.text_to_image[:, -1]) for r in recs]).mean(0)
    torch.testing.assert_close(means["base_4x4"][0], want, atol=1e-6, rtol=0)
    assert (tmp_path / "mean_image_attention.png").stat().st_size > 10_000
    quiet = tmp_path / "quiet"  # the figures pipeline's collections: the same means, no picture
    coll.collect_dataset(vlm, SAMPLE, quiet, batch_size=3, limit=5, progress=False, plot=False)
    assert not (quiet / "mean_image_attention.png").exists()
    assert load_file(str(quiet / "mean_attention.safetensors")).keys() == means.keys()
    torch.testing.assert_close(load_file(str(quiet / "mean_attention.safetensors"))["base_4x4"], means["base_4x4"],
                               atol=0, rtol=0)


def test_interrupted_collection_resumes_to_the_same_result(vlm, tmp_path, monkeypatch):
    full, broken = tmp_path / "full", tmp_path / "broken"
    coll.collect_dataset(vlm, SAMPLE, full, batch_size=3, progress=False)

    real = coll.record_attention
    monkeypatch.setattr(coll, "record_attention", DiesOnCall(real, 3))
    with pytest.raises(KeyboardInterrupt):
        coll.collect_dataset(vlm, SAMPLE, broken, batch_size=3, progress=False)
    assert len(ids(broken)) == 6  # two batches were checkpointed
    # a crash after appending lines but before the checkpoint leaves extra lines: resume drops them
    with open(broken / "samples.jsonl", "a") as f:
        f.write('{"id": "rocket-0", "partial": true}\n')
    monkeypatch.setattr(coll, "record_attention", real)
    coll.collect_dataset(vlm, SAMPLE, broken, batch_size=3, progress=False)

    assert ids(broken) == ids(full) == [s.id for s in read_samples(SAMPLE)]
    a, b = load_file(str(full / "mean_attention.safetensors")), load_file(str(broken / "mean_attention.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-7, rtol=0)
    assert json.loads((broken / "summary.json").read_text())["n_samples"] == len(ids(full))


def test_rerun_of_a_finished_collection_adds_nothing(vlm, tmp_path):
    coll.collect_dataset(vlm, SAMPLE, tmp_path, batch_size=4, limit=4, progress=False)
    again = coll.collect_dataset(vlm, SAMPLE, tmp_path, batch_size=4, limit=4, progress=False)
    assert again["n_samples"] == 4 and len(ids(tmp_path)) == 4


def test_undecodable_image_is_skipped_and_logged(vlm, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(SAMPLE, data)
    (data / "images" / "coffee.jpg").write_bytes(b"\x00not a jpeg")
    summary = coll.collect_dataset(vlm, data, tmp_path / "out", batch_size=4, progress=False)
    skipped = [json.loads(l) for l in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert {s["id"] for s in skipped} == {"coffee-0", "coffee-1"}
    assert "could not decode" in skipped[0]["error"]
    assert summary["n_samples"] == 10 and summary["n_skipped"] == 2


def test_other_models_checkpoint_is_not_mixed_in(vlm, tmp_path):
    coll.collect_dataset(vlm, SAMPLE, tmp_path, limit=2, progress=False)
    other = tiny.build("llava")
    with pytest.raises(vta.VTAError, match="new --out folder"):
        coll.collect_dataset(other, SAMPLE, tmp_path, limit=2, progress=False)


def test_cli_collect(tmp_path):
    result = CliRunner().invoke(app, ["collect", "--model", "tiny-qwen2-vl", "--data", str(SAMPLE),
                                      "--out", str(tmp_path), "--limit", "3", "--layers", "0,-1"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "summary.json").read_text())["layers"] == [0, 2]
    bad = CliRunner().invoke(app, ["collect", "--out", str(tmp_path / "x"), "--layers", "0,99"])
    assert bad.exit_code == 2 and "out of range" in bad.output


def test_dataset_reader_errors(tmp_path):
    with pytest.raises(vta.VTAError, match="no questions.jsonl"):
        read_samples(tmp_path)
    (tmp_path / "questions.jsonl").write_text('{"id": "a", "image": "x.png"}\n')
    with pytest.raises(vta.VTAError, match=r"questions.jsonl:1: missing key\(s\) \['question'\]"):
        read_samples(tmp_path)


# -- several processes (issue 15: `accelerate launch -m vtanalysis collect`) -------------------------
def _assert_same_collection(one: Path, many: Path):
    """Equal sample records (to 1e-6: batches differ, so padding differs), equal grids and counts, means
    to float tolerance (float64 sums added in another order)."""
    rows = lambda d: [json.loads(l) for l in (d / "samples.jsonl").read_text().splitlines()]  # noqa: E731
    a, b = rows(one), rows(many)
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for x, y in zip(a, b):
        for k in x:
            if isinstance(x[k], list):
                assert x[k] == pytest.approx(y[k], abs=2e-6), k
            else:
                assert x[k] == y[k], k
    ma, mb = load_file(str(one / "mean_attention.safetensors")), load_file(str(many / "mean_attention.safetensors"))
    assert ma.keys() == mb.keys()
    for k in ma:
        torch.testing.assert_close(ma[k], mb[k], atol=1e-6, rtol=0)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (one, many))
    assert (sa["n_samples"], sa["grids"], sa["n_skipped"]) == (sb["n_samples"], sb["grids"], sb["n_skipped"])


@pytest.mark.parametrize("n,world", [(7, 2), (5, 3), (2, 4)])
def test_shards_split_as_accelerate_does(n, world):
    from accelerate import PartialState

    items = list(range(n))
    parts = [coll.shard(items, r, world) for r in range(world)]
    assert sum(parts, []) == items
    state = PartialState()  # one process: compute what process r of `world` would get
    for r in range(world):
        state._shared_state.update(process_index=r, num_processes=world)
        with state.split_between_processes(items) as got:
            assert list(got) == parts[r]
    state._shared_state.update(process_index=0, num_processes=1)


def test_merged_shards_equal_one_process_and_an_interrupted_shard_resumes(vlm, tmp_path, monkeypatch):
    one, many = tmp_path / "one", tmp_path / "many"
    coll.collect_dataset(vlm, SAMPLE, one, batch_size=3, progress=False)
    coll.collect_dataset(vlm, SAMPLE, many, batch_size=3, progress=False, process=(0, 2))
    with pytest.raises(vta.VTAError, match="shard 1 of 2 has not run"):
        coll.merge_shards(vlm, many, 2)
    real = coll.record_attention
    monkeypatch.setattr(coll, "record_attention", DiesOnCall(real, 2))
    with pytest.raises(KeyboardInterrupt):
        coll.collect_dataset(vlm, SAMPLE, many, batch_size=3, progress=False, process=(1, 2))
    with pytest.raises(vta.VTAError, match="shard 1 of 2 .* has 3 of its"):
        coll.merge_shards(vlm, many, 2)
    monkeypatch.setattr(coll, "record_attention", real)
    before = (coll.shard_folder(many, 0, 2) / "state.safetensors").read_bytes()
    coll.collect_dataset(vlm, SAMPLE, many, batch_size=3, progress=False, process=(0, 2))  # finished: no work
    assert (coll.shard_folder(many, 0, 2) / "state.safetensors").read_bytes() == before
    coll.collect_dataset(vlm, SAMPLE, many, batch_size=3, progress=False, process=(1, 2))
    coll.merge_shards(vlm, many, 2)
    _assert_same_collection(one, many)


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_equals_one(tmp_path):
    """`accelerate launch --num_processes 2 -m vtanalysis collect` on CPU (gloo) writes the collection
    one process writes."""

    common = ["collect", "--model", "tiny-llava-next", "--data", str(SAMPLE), "--batch-size", "3"]
    run_cli(*common, "--out", str(tmp_path / "one"))
    run_cli(*common, "--out", str(tmp_path / "two"), processes=2)
    assert (tmp_path / "two" / "shard-1-of-2" / "shard.json").is_file()
    _assert_same_collection(tmp_path / "one", tmp_path / "two")
