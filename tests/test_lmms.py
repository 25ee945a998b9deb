"""Issue 15: the lmms-eval model plugin (`lmms-eval --model vtanalysis`) and the offline
`vtanalysis-shapes` task. Needs the `lmms` extra (`.ci/run` runs this file in its own environment)."""
import json
import subprocess
import sys

import pytest

pytest.importorskip("lmms_eval", reason="the lmms extra is not installed (pip install 'vtanalysis[lmms]')")

from vtanalysis.data import read_samples  # noqa: E402
from vtanalysis.errors import VTAError  # noqa: E402
from vtanalysis.integrations.lmms_task import TASK, write_task  # noqa: E402


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("lmms") / "tasks", 8, progress=False)


@pytest.fixture(scope="module")
def demo():
    from vtanalysis.models import load_vlm

    return load_vlm("demo")


def _lmms_eval(task, out, model_args: str) -> dict:
    """lmms-eval's own CLI in a subprocess; its results JSON."""
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "vtanalysis", "--model_args", model_args, "--batch_size", "4",
           "--tasks", TASK, "--include_path", str(task), "--output_path", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (path,) = out.rglob("*_results.json")
    return json.loads(path.read_text())["results"][TASK]


@pytest.mark.parametrize("method,keep", [("none", 1.0), ("fastv", 0.25)])
def test_lmms_eval_cli_accuracy_equals_vtanalysis_eval(task, demo, tmp_path, method, keep):
    """The same held-out samples through lmms-eval (entry point, task YAML, batch 4) and through
    `vtanalysis.evaluate`: equal exact-match accuracy and FLOPs ratio; one record per sample with
    the method's kept-token count (FastV keeps round(0.25 x image tokens) from its layer on)."""
    from vtanalysis.evaluate import evaluate

    records = tmp_path / "records.jsonl"
    got = _lmms_eval(task, tmp_path / "out", f"pretrained=demo,method={method},keep={keep},records={records}")
    samples = read_samples(task / "data")
    want = evaluate(demo, samples, method=method, keep=keep, batch_size=4, progress=False)
    assert got["exact_match,none"] == pytest.approx(want["accuracy"], abs=1e-9)
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    assert len(rows) == len(samples) and {r["method"] for r in rows} == {method}
    assert sum(r["flops"] for r in rows) / sum(r["flops_unpruned"] for r in rows) == pytest.approx(want["flops_ratio"])
    assert all((r["flops_ratio"] < 1) == (method == "fastv") for r in rows)
    if method == "fastv":
        assert all(r["kept_per_stage"] == [round(0.25 * r["image_tokens"])] for r in rows)
    from vtanalysis.integrations.lmms_report import collect

    (row,) = collect([tmp_path / "out"])  # `vtanalysis report`'s row of this run
    assert (row["method"], row["keep"], row["n"]) == (method, keep, len(samples))
    assert row["value"] == got["exact_match,none"] and row["flops_ratio"] == pytest.approx(want["flops_ratio"])


def _instance(kind, args):
    from lmms_eval.api.instance import Instance

    return Instance(request_type=kind, arguments=args, idx=0, metadata={"task": TASK, "doc_id": args[3], "repeats": 1})


def _model(task, **args):
    from vtanalysis.integrations.lmms import VTAnalysis

    model = VTAnalysis(pretrained="demo", records="", **args)
    rows = [json.loads(line) for line in (task / "data" / "lmms.jsonl").read_text().splitlines()]
    model.task_dict = {TASK: {"test": rows}}
    return model, rows


def _visual(task):
    from vtanalysis.integrations.lmms_task import visual

    return lambda doc: visual(task / "data", doc)


@pytest.mark.parametrize("method", ["none", "fastv", "adaptprune"])
def test_loglikelihood_is_the_likelihood_of_pruned_generation(task, demo, method):
    """A one-token continuation's log-likelihood is log_softmax of `prune.run`'s first-step logits
    at that token (the selection made on the prompt alone, as in generation); greedy iff argmax."""
    import torch

    from vtanalysis import prune

    model, rows = _model(task, method=method, keep=0.25)
    doc = rows[0]
    res = prune.run(demo, demo.prepare([[_visual(task)(doc)[0]]], [doc["question"]]), method, 0.25, max_new_tokens=1)
    logp = torch.log_softmax(res.logits[0], dim=-1)
    best, other = int(logp.argmax()), int(logp.argsort()[-2])
    tok = demo.processor.tokenizer
    reqs = [_instance("loglikelihood", (doc["question"], tok.decode([t]), _visual(task), 0, TASK, "test"))
            for t in (best, other)]
    (s1, g1), (s2, g2) = model.loglikelihood(reqs)
    assert s1 == pytest.approx(float(logp[best]), abs=1e-4) and g1
    assert s2 == pytest.approx(float(logp[other]), abs=1e-4) and not g2


def test_unpruned_loglikelihood_equals_teacher_forcing(task, demo):
    """method=none: a multi-token continuation scores as one forward pass of the stock model over
    prompt + continuation (summed log-probabilities of the continuation's tokens)."""
    import torch

    model, rows = _model(task)
    doc, continuation = rows[1], " red blue circle"
    (score, _), = model.loglikelihood([_instance("loglikelihood", (doc["question"], continuation, _visual(task), 1,
                                                                     TASK, "test"))])
    prompt = demo.adapter.build_prompt(demo.processor, doc["question"], 1)
    batch = demo.prepare([[_visual(task)(doc)[0]]], prompts=[prompt + continuation])
    with torch.inference_mode():
        logits = demo.model(**batch.model_inputs).logits[0].float()
    ids = batch.model_inputs["input_ids"][0]
    n = 3
    want = torch.log_softmax(logits[-n - 1:-1], -1).gather(-1, ids[-n:, None]).sum()
    assert score == pytest.approx(float(want), abs=1e-4)


def test_bad_model_args_are_named(task):
    with pytest.raises(VTAError, match="registered|unknown"):
        _model(task, method="no-such-method")
    with pytest.raises(VTAError, match="layerz"):
        _model(task, method="fastv", keep=0.25, layerz=3)
    model, rows = _model(task)
    sampling = _instance("generate_until", (rows[0]["question"], {"temperature": 0.7}, _visual(task), 0, TASK, "test"))
    with pytest.raises(VTAError, match="greedily"):
        model.generate_until([sampling])
