"""A new user's first hour (issue 20): every bad argument to a public entry point is a `VTAError`
naming the problem (the CLI: one red line, exit code 2, no traceback), and the model computes
exactly what it did before the failed call."""
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import vtanalysis as vta
from conftest import QUESTIONS
from vtanalysis import prune
from vtanalysis.cli import app
from vtanalysis.collect import record_attention
from vtanalysis.evaluate import evaluate
from vtanalysis.models import load_vlm


@pytest.fixture(scope="module")
def demo():
    return load_vlm("demo")


@pytest.fixture(scope="module")
def batch(demo, images):
    return demo.prepare(images[:2], QUESTIONS[:2])


@torch.no_grad()
def logits(vlm, batch):
    return vlm.model(**batch.model_inputs).logits[:, -1]


def corrupt(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("just text\n" * 20)
    return path


API_CASES = {
    "record: no layers": (lambda v, b, t: record_attention(v, b, layers=[]), "layers is empty"),
    "record: layer 99": (lambda v, b, t: record_attention(v, b, layers=[99]), "out of range"),
    "record: heads": (lambda v, b, t: record_attention(v, b, heads="max"), "heads must be"),
    "prepare: empty batch": (lambda v, b, t: v.prepare([], []), "empty batch"),
    "prepare: 4,000-word question": (lambda v, b, t: v.prepare([t / "x.png"], [" ".join(["red"] * 4000)]),
                                     r"\d+ tokens .* context of 512 positions"),
    "prepare: no placeholder": (lambda v, b, t: v.prepare([t / "x.png"], prompts=["what is it ?"]), "no image placeholder"),
    "prepare: corrupt image": (lambda v, b, t: v.prepare([corrupt(t)], ["q ?"]), "could not decode"),
    "prepare: missing image": (lambda v, b, t: v.prepare([t / "nope.png"], ["q ?"]), "not found"),
    "prune: keep 0": (lambda v, b, t: prune.run(v, b, "fastv", 0.0), "outside"),
    "prune: keep 1.5": (lambda v, b, t: prune.run(v, b, "fastv", 1.5), "outside"),
    "prune: keep 99999": (lambda v, b, t: prune.run(v, b, "fastv", 99999), "larger than the image"),
    "prune: unknown method": (lambda v, b, t: prune.run(v, b, "fastvv", 0.5), "unknown pruning method"),
    "prune: layer 999": (lambda v, b, t: prune.run(v, b, "fastv", 0.5, layer=999), "out of range"),
    "prune: layer 0": (lambda v, b, t: prune.run(v, b, "fastv", 0.5, layer=0), ">= 1"),
    "prune: unknown knob": (lambda v, b, t: prune.run(v, b, "fastv", 0.5, layr=2), "has no option 'layr'"),
    "prune: max_new_tokens 0": (lambda v, b, t: prune.run(v, b, "fastv", 0.5, max_new_tokens=0), "max_new_tokens"),
    "prune: positions": (lambda v, b, t: prune.run(v, b, "fastv", 0.5, positions="shuffled"), "positions must be"),
    "evaluate: batch 0": (lambda v, b, t: evaluate(v, [], batch_size=0), "batch_size must be"),
    "load: no such folder": (lambda v, b, t: load_vlm("no/such/model-folder"), "cannot load a model"),
    "load: device gpu0": (lambda v, b, t: load_vlm("demo", device="gpu0"), "unknown device"),
    "load: dtype float13": (lambda v, b, t: load_vlm("demo", dtype="float13"), "unknown dtype"),
}


@pytest.mark.parametrize("case", list(API_CASES))
def test_bad_arguments_raise_a_clear_error_and_leave_the_model_intact(demo, batch, images, tmp_path, case):
    from PIL import Image

    Image.fromarray(images[0]).save(tmp_path / "x.png")
    call, message = API_CASES[case]
    before = logits(demo, batch)
    with pytest.raises(vta.VTAError, match=message):
        call(demo, batch, tmp_path)
    assert torch.equal(logits(demo, batch), before)
    assert torch.equal(prune.run(demo, batch, "none", max_new_tokens=1).logits, prune.run(
        demo, batch, "fastv", 1.0, max_new_tokens=1).logits)


def test_layer_minus_one_is_the_last_layer_everywhere(demo, batch):
    """The issue's first case: layer=-1 wrapped the last layer twice and broke the model for good."""
    before = logits(demo, batch)
    res = prune.run(demo, batch, "fastv", 0.5, layer=-1, max_new_tokens=2)
    assert res.stage_layers == [demo.num_layers - 1]
    assert record_attention(demo, batch, layers=[-1]).layers == [demo.num_layers - 1]
    assert torch.equal(logits(demo, batch), before)


IMAGE = str(Path(__file__).resolve().parents[1] / "data" / "sample" / "images" / "chelsea.jpg")
CLI_CASES = {
    "prune --max-new-tokens 0": ["prune", "--image", IMAGE, "--question", "q ?", "--max-new-tokens", "0"],
    "prune missing image": ["prune", "--image", "nope.png", "--question", "q ?"],
    "prune --keep abc": ["prune", "--image", IMAGE, "--question", "q ?", "--keep", "abc"],
    "prune --knob without =": ["prune", "--image", IMAGE, "--question", "q ?", "--knob", "layer"],
    "prune --keep 1 (one token or all?)": ["prune", "--image", IMAGE, "--question", "q ?", "--keep", "1"],
    "prune a folder as --image": ["prune", "--image", "{tmp}", "--question", "q ?"],
    "prune an empty question": ["prune", "--image", IMAGE, "--question", "  ", "--model", "tiny-llava"],
    "prune --out is a folder": ["prune", "--image", IMAGE, "--question", "q ?", "--out", "{tmp}"],
    "prune --out without an image suffix": ["prune", "--image", IMAGE, "--question", "q ?", "--out", "{tmp}/overlay"],
    "eval --batch-size 0": ["eval", "--batch-size", "0"],
    "eval --model no/such": ["eval", "--model", "no/such/model-folder"],
    "eval --device gpu0": ["eval", "--device", "gpu0"],
    "collect --limit -1": ["collect", "--out", "{tmp}/c", "--limit", "-1"],
    "collect --limit 0": ["collect", "--out", "{tmp}/c", "--limit", "0"],
    "collect --out is a file": ["collect", "--out", "{tmp}/file.txt", "--limit", "2"],
    "figures --samples 0": ["figures", "--samples", "0", "--out", "{tmp}/f"],
    "unknown plugin": ["--plugin", "no_such_module_here", "methods"],
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_bad_arguments_exit_2_without_a_traceback(tmp_path, case, monkeypatch):
    from vtanalysis.prune import plugins

    monkeypatch.setenv(plugins.ENV, "")  # --plugin extends it (for the app's server): restored afterwards
    (tmp_path / "file.txt").write_text("not a folder")
    args = [a.replace("{tmp}", str(tmp_path)) for a in CLI_CASES[case]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output  # a message, not a crash


def test_python_dash_m_and_version():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "vtanalysis", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for command in ("collect", "prune", "methods", "app", "figures", "eval", "train-demo"):
        assert command in out.stdout
    version = subprocess.run([sys.executable, "-m", "vtanalysis", "--version"], capture_output=True, text=True, timeout=120)
    assert version.stdout.strip() == f"vtanalysis {vta.__version__}"


def test_train_demo_never_overwrites_the_shipped_weights(tmp_path):
    """Issue 20: `train-demo --steps 2` without --save-to overwrote the package's demo weights."""
    import hashlib

    from vtanalysis.models import demo

    def digest():
        return {str(p): hashlib.sha1(p.read_bytes()).hexdigest()
                for folder in (demo.WEIGHTS, demo.SMALL_WEIGHTS) for p in sorted(folder.rglob("*")) if p.is_file()}

    before = digest()
    result = CliRunner().invoke(app, ["train-demo", "--recipe", "small", "--steps", "2", "--vision-steps", "2", "--batch-size", "4",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    for shipped in (demo.WEIGHTS, demo.SMALL_WEIGHTS):  # `demo` and `demo-small`
        refused = CliRunner().invoke(app, ["train-demo", "--steps", "0", "--vision-steps", "0", "--out",
                                           str(tmp_path / "r2"), "--save-to", str(shipped)])
        assert refused.exit_code == 2 and "shipped demo weights" in refused.output
    assert digest() == before


@pytest.mark.parametrize("case, says", [("prune --keep 1 (one token or all?)", "write 1.0 to keep them all"),
                                        ("prune a folder as --image", "is a folder, not an image file"),
                                        ("prune an empty question", "question 0 is empty"),
                                        ("prune --out is a folder", "pass a file name such as")])
def test_cli_messages_name_the_fix(tmp_path, case, says):
    """Issue 43: each of a new user's slips gets a message naming the fix, before any model runs."""
    import subprocess
    import sys

    args = [a.replace("{tmp}", str(tmp_path)) for a in CLI_CASES[case]]
    result = subprocess.run([sys.executable, "-m", "vtanalysis", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    words = " ".join(w for w in result.stderr.split() if w not in "│╭╮╰╯─")  # rich draws usage errors in a box
    assert says in words


def test_prune_writes_its_overlay_into_a_missing_folder_and_says_what_keep_meant(tmp_path):
    out = tmp_path / "new" / "deeper" / "overlay.png"
    result = CliRunner().invoke(app, ["prune", "--model", "tiny-llava", "--image", IMAGE, "--question", "q ?",
                                      "--keep", "16", "--max-new-tokens", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0 and "keep 16 tokens" in result.output
    ratio = CliRunner().invoke(app, ["prune", "--model", "tiny-llava", "--image", IMAGE, "--question", "q ?",
                                     "--keep", "25%", "--max-new-tokens", "2", "--out", str(out)])
    assert ratio.exit_code == 0 and "keep ratio 0.25" in ratio.output


def test_an_unknown_model_name_without_a_reachable_hub_is_refused_at_once(monkeypatch):
    """Issue 43: a mistyped model name waited half a minute of hub retries before its message; with no
    local folder, no cached copy and no reachable hub, it is refused before any download is tried."""
    from vtanalysis.models import loading

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not loading.hub_reachable()
    tried = []
    monkeypatch.setattr(loading.transformers.AutoConfig, "from_pretrained",
                        lambda name, **kw: tried.append(kw) or (_ for _ in ()).throw(OSError("not cached")))
    with pytest.raises(vta.UnsupportedModelError, match="no Hugging Face hub is reachable"):
        load_vlm("no-such-org/no-such-model")
    assert tried == [{"local_files_only": True}]  # only the cache was asked
