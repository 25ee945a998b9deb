"""Issue 15: `vtanalysis report` (AdaptPrune Table 1 / AdaFV Table 8 layout) from lmms-eval results
files and the plugin's per-sample records; no lmms-eval needed."""
import json

import pytest

from vtanalysis.errors import VTAError
from vtanalysis.integrations.lmms_report import collect, markdown


def _run(folder, method, keep, acc, flops, records=True):
    folder.mkdir(parents=True)
    rec = folder / "records.jsonl"
    args = f"pretrained=llava-hf/llava-1.5-7b-hf,method={method},keep={keep}" + (f",records={rec}" if records else "")
    (folder / "x_results.json").write_text(json.dumps({
        "config": {"model": "vtanalysis", "model_args": args},
        "results": {"pope": {"alias": "pope", "exact_match,none": acc, "exact_match_stderr,none": 0.01}},
        "n-samples": {"pope": {"original": 2, "effective": 2}}}))
    rows = [{"task": "pope", "flops": f, "flops_unpruned": 100, "batch_prefill_s": 0.2, "batch": 2} for f in flops]
    rec.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_rows_per_method_and_keep_with_flops_from_records(tmp_path):
    _run(tmp_path / "a", "fastv", 0.1, 0.8, [10, 30])
    _run(tmp_path / "b", "none", 1.0, 0.9, [100, 100])
    _run(tmp_path / "c", "adaptprune", 0.1, 0.85, [20, 20], records=False)
    rows = collect([tmp_path])
    assert [(r["method"], r["keep"]) for r in rows] == [("none", 1.0), ("adaptprune", 0.1), ("fastv", 0.1)]
    fastv = rows[2]
    assert fastv["flops_ratio"] == pytest.approx(0.2) and fastv["prefill_ms"] == pytest.approx(100.0)
    assert rows[1]["flops_ratio"] is None and fastv["n"] == 2
    table = markdown(rows)
    assert "| llava-hf/llava-1.5-7b-hf | pope | fastv | 0.1 | exact_match | 0.8000 ± 0.0196 | 0.200 | 100.0 | 2 |" in table


def test_bad_report_input_is_named(tmp_path):
    with pytest.raises(VTAError, match="no lmms-eval results"):
        collect([tmp_path])
    (tmp_path / "bad_results.json").write_text("{not json")
    with pytest.raises(VTAError, match="bad_results.json"):
        collect([tmp_path])
