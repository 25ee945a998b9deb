"""Dataset-scale collection: streaming means, atomic checkpoints, resume without loss or double counting."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
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


def test_interrupted_collection_resumes_to_the_same_result(vlm, tmp_path, monkeypatch):
    full, broken = tmp_path / "full", tmp_path / "broken"
    coll.collect_dataset(vlm, SAMPLE, full, batch_size=3, progress=False)

    real = coll.record_attention
    calls = {"n": 0}

    def dies_on_third_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(coll, "record_attention", dies_on_third_batch)
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
    bad = CliRunner().invoke(app, ["collect", "--out", str(tmp_path / "x"), "--layers", "0,7"])
    assert bad.exit_code == 2 and "out of range" in bad.output


def test_dataset_reader_errors(tmp_path):
    with pytest.raises(vta.VTAError, match="no questions.jsonl"):
        read_samples(tmp_path)
    (tmp_path / "questions.jsonl").write_text('{"id": "a", "image": "x.png"}\n')
    with pytest.raises(vta.VTAError, match=r"questions.jsonl:1: missing key\(s\) \['question'\]"):
        read_samples(tmp_path)
