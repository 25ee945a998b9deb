"""Demo-model issues: `load_vlm("demo")` works offline in a fresh process, with the documented shape
(>= 144 image tokens, LLaVA architecture, word tokenizer); without weights the error says how to make them.
Issue 42: `demo` is the grown 16-layer model (>= 0.95 held-out, >= 0.90 per type), shipped with its recipe,
tower probes and per-piece history; `demo-small` is the 4-layer model it grew from; `demo-grown` is `demo`
before its fine-tuning, the control of its layer-wise figures."""
import json
import tempfile
from pathlib import Path
import os
import subprocess
import sys

import pytest
import torch

from vtanalysis.models import demo

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = """
import json, sys, numpy as np, vtanalysis as vta
from vtanalysis.data import shapes
vlm = vta.load_vlm(sys.argv[1])
sc = shapes.scene(0)
q = shapes.questions(sc, 0)[0]
batch = vlm.prepare([sc.image], [q.question])
print(json.dumps({"class": type(vlm.model).__name__, "n_image": batch.layouts[0].n_image_tokens,
                  "grid": list(batch.layouts[0].grids[0].shape), "name": vlm.name, "layers": vlm.num_layers}))
"""
SHIPPED = {"demo": demo.WEIGHTS, "demo-small": demo.SMALL_WEIGHTS}
# held-out targets: issue 42 for the grown demo, the demo-model issue for the small one
TARGETS = {"demo": {"accuracy": 0.95, "per_type": 0.90, "layers": 16},
           "demo-small": {"accuracy": 0.85, "per_type": 0.7, "layers": 4}}


@pytest.mark.parametrize("name", list(SHIPPED))
def test_demo_loads_offline_in_a_fresh_process(name):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, name], capture_output=True, text=True, env=env, timeout=300)
    if not demo.available(SHIPPED[name]):
        assert "run `vtanalysis train-demo`" in proc.stderr
        pytest.fail("the demo weights are not shipped")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.splitlines()[-1])
    assert info == {"class": "LlavaForConditionalGeneration", "n_image": 144, "grid": [12, 12], "name": name,
                    "layers": TARGETS[name]["layers"]}


def test_demo_weights_are_small():
    """Issue 42: <= 40 MB shipped in all, no file over 15 MB."""
    files = [p for folder in SHIPPED.values() for p in folder.rglob("*") if p.is_file()]
    assert 0 < sum(p.stat().st_size for p in files) < 40 * 2**20
    assert max(p.stat().st_size for p in files) <= 15 * 2**20


@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_metrics_meet_the_issue_targets(name):
    """The record written when the model was saved (`train_demo.report`, 500 held-out samples): the
    issue's accuracy targets overall and per type, and a middle layer whose last-token image attention
    falls in the queried object at >= 2x its area."""
    metrics = json.loads((SHIPPED[name] / "metrics.json").read_text())
    held, target = metrics["heldout"], TARGETS[name]
    assert held["samples"] >= 500 and held["accuracy"] >= target["accuracy"]
    assert set(held["per_type"]) == {"color", "shape", "exist", "count", "position", "small"}
    assert min(held["per_type"].values()) >= target["per_type"]
    ratio = metrics["attention_in_mask"]["ratio"]
    assert len(ratio) == target["layers"] and max(ratio[1:-1]) >= 2.0


def test_the_grown_demo_ships_its_recipe_probes_and_pieces():
    """Issue 42, item 3 and "done when": the recipe, the tower's held-out probes and retrieval, and every
    piece's record are in the shipped training.json, equal to the committed run's; the tower reads shape
    and colour per patch (>= 0.95) and retrieves its caption among 256 scenes (>= 0.95)."""
    shipped = json.loads((demo.WEIGHTS / "training.json").read_text())
    committed = ROOT / "training" / "demo-grow-fresh" / "training.json"
    if committed.is_file():
        assert shipped == json.loads(committed.read_text())
    assert shipped["recipe"]["copies"] == 3 and len(shipped["pieces"]) >= 1
    evals = [e for piece in shipped["pieces"] for e in piece["evals"]]
    tower = [e for e in evals if e["stage"] == "tower"][-1]
    assert tower["probe_shape"] >= 0.95 and tower["probe_color"] >= 0.95 and tower["retrieval@1"] >= 0.95
    assert 0.9 <= tower["probe_size"]  # 0.935: the small tower it started from read size at 0.931 (issue 42's note)
    last = [e for e in evals if e["stage"] == "instruct"][-1]
    assert last["step"] == shipped["recipe"]["instruct_steps"] and last["exact_match"] >= 0.95


def test_the_grown_demo_answers_held_out_questions():
    """Issue 42, "done when": re-measured here, not read back, on a fixed subset (the first 30 held-out
    scenes, never trained on): the shipped 16-layer demo meets the 0.95 target."""
    import vtanalysis as vta
    from vtanalysis.data import shapes
    from vtanalysis.data.dataset import read_samples
    from vtanalysis.evaluate import evaluate

    folder = shapes.write_dataset(Path(tempfile.mkdtemp()), n_images=30, seed=0, progress=False)
    result = evaluate(vta.load_vlm("demo"), read_samples(folder.parent), progress=False)
    assert result["accuracy"] >= 0.95, result["per_type"]


def test_the_control_is_the_model_the_run_started_from():
    """Issue 42, item 4: `demo-grown` is the grown model before any instruct step: growth preserves the
    function, so it answers exactly as `demo-small`'s decoder on `demo`'s (frozen) tower, and it is the
    state the committed run rebuilds from its export (`train_grow.from_export(before_training=True)`)."""
    import vtanalysis as vta
    from vtanalysis.data import shapes
    from vtanalysis.models.demo import train_grow

    control, small = vta.load_vlm("demo-grown"), vta.load_vlm("demo-small")
    assert control.num_layers == 16 and control.name == "demo-grown"
    small.model.model.vision_tower.load_state_dict(vta.load_vlm("demo").model.model.vision_tower.state_dict())
    scenes = [shapes.scene(s) for s in range(3)]
    batch = small.prepare([sc.image for sc in scenes], [shapes.questions(sc, 0)[0].question for sc in scenes])
    with torch.no_grad():
        torch.testing.assert_close(control.model(**batch.model_inputs).logits, small.model(**batch.model_inputs).logits,
                                   rtol=1e-4, atol=1e-4)
    export = ROOT / "training" / "demo-grow-fresh" / "weights.pt"
    if export.is_file():
        rebuilt = train_grow.from_export(export, before_training=True)[0].model.state_dict()
        assert all(torch.equal(v, rebuilt[k]) for k, v in control.model.state_dict().items())


def test_demo_small_answers_held_out_questions():
    """Re-measured here, not read back: the 4-layer weights answer unseen scenes far above chance
    (chance is 1/8 for colour questions, 1/2 for yes/no)."""
    import vtanalysis as vta
    from vtanalysis.data import shapes
    from vtanalysis.data.dataset import read_samples
    from vtanalysis.evaluate import evaluate

    folder = shapes.write_dataset(Path(tempfile.mkdtemp()), n_images=30, seed=0, progress=False)
    result = evaluate(vta.load_vlm("demo-small"), read_samples(folder.parent), progress=False)
    assert result["accuracy"] >= 0.8, result["per_type"]
