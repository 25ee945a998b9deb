"""Command-line interface: `vtanalysis --help`."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from ._core import processes

console = Console(stderr=True)
# the bundled trained demos (`models.loading.DEMOS`, named here so that `--help` imports no model code)
DEMOS = ("demo", "demo-small")


def _registered() -> dict[str, str]:
    """The names the code registers, for help texts: bundled models, figures, pruning methods."""
    from .experiments import names
    from .models import tiny
    from .prune import methods

    return {"models": ", ".join([*DEMOS, *tiny.NAMES]), "figures": ", ".join(names()), "methods": ", ".join(methods())}


class _ListsRegistered(typer.core.TyperCommand):
    """A command whose option help fills {models}, {figures} and {methods} from the registries when the
    help is shown: `--help` lists what the code registers, and running a command imports nothing more."""

    def fill_registered(self) -> None:
        """Replace {models}, {figures} and {methods} in the options' help with the registered names."""
        if any("{" in (p.help or "") for p in self.params):
            names = _registered()
            for p in self.params:
                p.help = p.help.format(**names) if p.help else p.help

    def format_help(self, ctx, formatter):
        self.fill_registered()
        return super().format_help(ctx, formatter)


app = typer.Typer(add_completion=False, no_args_is_help=True, 
                  help="Record, analyse and prune visual-token attention in vision-language models.")
MODEL_HELP = "Hugging Face id, local folder, or a bundled name: {models}."


def _parse_layers(text: str):
    if text == "all":
        return "all"
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--layers takes 'all' or comma-separated integers like '0,2,-1', not {text!r}.")


def _version(value: bool):
    if value:
        from importlib.metadata import version

        print(f"vtanalysis {version('vtanalysis')}")
        raise typer.Exit()


@app.callback()
def main(plugin: list[str] = typer.Option(None, help="Import this module first, so the pruning methods it "
                                          "registers are usable by name (repeatable; see also VTA_PLUGINS)."),
         show_version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                           help="Print the version and exit.")):
    """vtanalysis command line."""
    import os

    import matplotlib

    matplotlib.use("Agg")  # figures go to files; only an entry point chooses the backend, never the library
    if plugin:  # through the environment, so the app's server process loads them too
        from .errors import VTAError
        from .prune import plugins  # imports torch: only when asked (`--help` stays light)

        os.environ[plugins.ENV] = ",".join(filter(None, [os.environ.get(plugins.ENV, ""), *plugin]))
        try:
            plugins.load()
        except VTAError as err:
            console.print(f"[red]error:[/red] {err}")
            raise typer.Exit(2)


def _parse_knobs(items: list[str] | None) -> dict:
    """['layer=3', 'seed=1', 'dedupe=false'] -> {'layer': 3, 'seed': 1, 'dedupe': False}."""
    import ast

    knobs = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"--knob takes name=value (e.g. --knob layer=3), not {item!r}.")
        value = value.strip()
        lowered = value.lower()
        if lowered in ("true", "false"):
            knobs[name.strip()] = lowered == "true"
            continue
        try:
            knobs[name.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            knobs[name.strip()] = value
    return knobs


@app.command(cls=_ListsRegistered)
def collect(
    model: str = typer.Option("demo", help=MODEL_HELP),
    data: Path = typer.Option(None, help="Dataset folder: images + questions.jsonl. Default for the demo model: "
                              "its held-out scenes, written to OUT/data."),
    out: Path = typer.Option(..., help="Output folder; rerun with the same folder to resume."),
    batch_size: int = typer.Option(4, min=1, help="Samples per forward pass."),
    layers: str = typer.Option("all", help="'all' or comma-separated decoder-layer indices."),
    limit: int = typer.Option(None, min=1, help="Use only the first N samples."),
    device: str = typer.Option("cpu", help="torch device, e.g. cpu, cuda, or auto (a model larger than one GPU, "
                                           "spread over all)."),
    save_records: bool = typer.Option(False, help="Also keep every batch's full attention record."),
):
    """Record per-layer text-to-image attention over a dataset; writes mean maps, a figure and a summary.

    Under `accelerate launch -m vtanalysis collect ...` each process collects its shard of the
    dataset (resumable on its own) and the main process merges them."""
    from .collect.dataset import collect_sharded
    from .errors import VTAError
    from ._core.files import output_folder
    from .models import load_vlm

    try:
        procs = processes.current()
        output_folder(out)  # before the demo's scenes are written into it
        vlm = load_vlm(model, device=_process_device(procs, device))
        if data is None and procs.main:
            data = _demo_heldout(model, out / "data", limit or 64)
        procs.wait()  # the demo's scenes are written by the main process
        data = data or out / "data"
        summary = collect_sharded(vlm, data, out, procs, batch_size=batch_size, layers=_parse_layers(layers),
                                  limit=limit, save_records=save_records)
        if not procs.main:
            return
    except VTAError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2)
    console.print(f"collected {summary['n_samples']} samples ({summary['n_skipped']} skipped) "
                  f"over layers {summary['layers'][0]}..{summary['layers'][-1]} -> {out}")


def _process_device(procs, device: str) -> str:
    """Under several processes with GPUs, each process on its own GPU (accelerate's device)."""
    if procs.world > 1 and device == "cpu" and str(procs.state.device) != "cpu":
        return str(procs.state.device)
    return device


def _parse_keep(text: str):
    """'0.25' (or '25%') is a ratio of the image tokens, '64' a token count. '1' is refused: it would keep
    one token where '1.0' keeps them all."""
    text = text.strip()
    try:
        if text.endswith("%"):
            return float(text[:-1]) / 100
        if "." in text:
            return float(text)
        count = int(text)
    except ValueError:
        raise typer.BadParameter(f"--keep takes a ratio like 0.1 (or 10%) or a token count like 64, not {text!r}.")
    if count == 1:
        raise typer.BadParameter("--keep 1 would keep a single image token: write 1.0 to keep them all, or a count "
                                 "of at least 2.")
    return count


def _keep_words(keep) -> str:
    """How a parsed --keep is printed: counts and ratios never look alike."""
    return f"{keep} tokens" if isinstance(keep, int) else f"ratio {keep:g}"


def _overlay_path(out: Path) -> Path:
    """--out of `prune`, checked before the run: a file name with an image suffix; missing folders are made."""
    from .errors import VTAError

    if out.is_dir():
        raise VTAError(f"--out '{out}' is a folder; pass a file name such as {out / 'overlay.png'}.")
    if out.suffix.lower() not in (".png", ".pdf", ".svg", ".jpg", ".jpeg"):
        raise VTAError(f"--out '{out}' has no image suffix; end it in .png, .pdf, .svg or .jpg.")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


@app.command("prune", cls=_ListsRegistered)
def prune_cmd(
    image: Path = typer.Option(..., help="Image file."),
    question: str = typer.Option(..., help="Question about the image."),
    model: str = typer.Option("demo", help=MODEL_HELP),
    method: str = typer.Option("fastv", help="Pruning method: {methods} (`vtanalysis methods` says what each does)."),
    keep: str = typer.Option("0.25", help="A ratio of the image tokens (0.25 or 25%) or a token count of at least 2 (64)."),
    layer: int = typer.Option(None, help="Pruning layer K for single-stage methods (method default if unset)."),
    knob: list[str] = typer.Option(None, help="A method option as name=value, e.g. seed=1 (repeatable; "
                                   "`vtanalysis methods` lists each method's)."),
    max_new_tokens: int = typer.Option(16, min=1, help="Answer length limit."),
    out: Path = typer.Option(Path("overlay.png"), help="Where to save the retained-token overlay."),
    device: str = typer.Option("cpu", help="torch device (cpu, cuda, or auto: spread over all GPUs)."),
):
    """Answer a question with and without pruning; print kept counts and FLOPs; save an overlay PNG."""
    from . import prune
    from .errors import VTAError
    from .models import load_vlm
    from .models.images import load_image
    from .viz.overlay import overlay_figure

    try:
        ratio = _parse_keep(keep)
        out = _overlay_path(out)
        img = load_image(image)
        vlm = load_vlm(model, device=device)
        batch = vlm.prepare([img], [question])
        knobs = {**_parse_knobs(knob), **({"layer": layer} if layer is not None else {})}
        base = prune.run(vlm, batch, "none", max_new_tokens=max_new_tokens)
        res = prune.run(vlm, batch, method, ratio, max_new_tokens=max_new_tokens, **knobs)
    except VTAError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2)
    n = batch.layouts[0].n_image_tokens
    print(f"answer ({method}, keep {_keep_words(ratio)}): {res.answers[0]}")
    print(f"answer (unpruned):        {base.answers[0]}")
    for layer_k, counts in zip(res.stage_layers, res.kept_counts):
        print(f"stage at layer {layer_k}: kept {counts[0]} of {n} image tokens")
    print(f"prefill FLOPs ratio {res.flops_ratio:.3f}; prefill time {res.prefill_s:.3f}s vs {base.prefill_s:.3f}s unpruned")
    kept = res.kept[-1][0] if res.kept else base.kept[0][0] if base.kept else list(range(n))
    fig = overlay_figure(vlm, img, batch.layouts[0], kept,
                         title=f"{method}, keep {_keep_words(ratio)}: {question}\nanswer: {res.answers[0]}")
    fig.savefig(out, dpi=120)
    print(f"overlay saved to {out}")


@app.command("methods")
def methods_cmd():
    """List the registered pruning methods: where each acts, its knobs, and what it does."""
    from . import prune

    rows = [(name, prune.get(name).where, ", ".join(prune.get(name).knobs) or "-", prune.get(name).summary)
            for name in prune.methods()]
    widths = [max(len(r[i]) for r in rows + [("method", "where", "knobs", "")]) + 2 for i in range(3)]
    for row in [("method", "where", "knobs", "summary"), *rows]:  # columns as wide as their longest entry
        print("".join(cell.ljust(w) for cell, w in zip(row, widths)) + row[3])


@app.command("families")
def families_cmd():
    """List the supported model families: transformers class, tiny model, and what each supports."""
    from . import prune
    from .models import tiny
    from .models.registry import ADAPTERS

    tiny_names = {"llava-1.5": "tiny-llava", **{family: name for name, family in tiny.NAMES.items()}}
    print(f"{'family':<17}{'transformers class':<42}{'tiny model':<22}{'[CLS]':<10}{'positions':<11}"
          f"{'prefill attention':<20}image tokens")
    for a in ADAPTERS:
        print(f"{a.family:<17}{a.model_class:<42}{tiny_names.get(a.family, '-'):<22}{'yes' if a.has_cls else 'received' if a.received_saliency else 'no':<10}"
              f"{'M-RoPE' if a.mrope else '1-D RoPE':<11}{'images both ways' if a.bidirectional_images else 'causal':<20}"
              f"{'follow the image size' if a.resizable else 'fixed'}")
    cls = [m for m in prune.methods() if "cls" in prune.get(m).needs]
    token = [m for m in cls if "cls_token" in prune.get(m).needs]
    print(f"\n[CLS] no: {', '.join(cls)} are refused there (they rank by the vision [CLS] token's attention)."
          f"\n[CLS] received: they rank by the attention each patch receives (VisPruner's SigLIP rule), except "
          f"{', '.join(token)} (they need the token itself or its CLIP), refused.")


@app.command("app")
def app_cmd(
    port: int = typer.Option(8501, help="Port of the local web server."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every network interface; the app "
                             "loads models and accepts uploads, so only on a network you trust)."),
    headless: bool = typer.Option(True, help="Do not open a browser window."),
):
    """Start the token-inspection Streamlit app (apps/inspect_tokens.py of a source checkout)."""
    import sys

    from .inspection import MAX_UPLOAD_MB

    page = Path(__file__).resolve().parents[1] / "apps" / "inspect_tokens.py"
    if not page.is_file():
        console.print(f"[red]error:[/red] {page} not found; the app ships with the source checkout "
                      "(pip install -e '.[app]' from a clone).")
        raise typer.Exit(2)
    raise typer.Exit(_run_forwarding_signals([sys.executable, "-m", "streamlit", "run", str(page), "--server.port",
                                             str(port), "--server.headless", str(headless).lower(), "--server.address",
                                             host, "--browser.gatherUsageStats", "false",
                                             "--server.maxUploadSize", str(MAX_UPLOAD_MB)]))


def _run_forwarding_signals(cmd: list[str]) -> int:
    """Run `cmd` as a child process and return its exit code. SIGTERM, SIGINT and SIGHUP sent to this
    process go to the child, and the child never outlives it (terminated, then killed after 10 s):
    stopping `vtanalysis app` by its process id stops the server it started."""
    import signal
    import subprocess

    child = subprocess.Popen(cmd)

    def forward(signum, frame):
        if child.poll() is None:
            child.send_signal(signum)
    handled = [s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {s: signal.signal(s, forward) for s in handled}
    try:
        return child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()



def _demo_heldout(model: str | None, folder: Path, samples: int) -> Path:
    """The demo model's held-out split (scenes 0, 1, ...; training uses seeds >= 1,000,000) in `folder`.

    a `model` other than the demos is refused (eval needs the data a real model is scored on); None skips the check.
    """
    from .data import shapes
    from .errors import VTAError

    if model not in (*DEMOS, None):
        raise VTAError("--data is required for models other than the demos ('demo', 'demo-small'): a dataset folder "
                       "in the standard format.")
    n_images = max(1, samples // 4 + 1)  # scenes support about 4.5 question types each
    info = folder / "scenes.json"
    if not info.is_file() or json.loads(info.read_text())["n_images"] < n_images:
        shapes.write_dataset(folder, n_images=n_images, seed=0, progress=False)
    return folder


@app.command("figures", cls=_ListsRegistered)
def figures_cmd(
    model: str = typer.Option("demo", help=MODEL_HELP),
    data: Path = typer.Option(None, help="Dataset folder in the standard format. Default: the demo model's "
                              "held-out scenes (ground-truth masks), written to OUT/cache/data."),
    out: Path = typer.Option(Path("figures"), help="Output folder (PNG, PDF and the numbers as CSV/JSON)."),
    only: list[str] = typer.Option(None, help="Make only this figure (repeatable): {figures}."),
    samples: int = typer.Option(400, min=1, help="Samples per analysis (positional bias: split over the tasks); "
                                "400 keeps every accuracy's 95 % interval within +-0.05."),
    batch_size: int = typer.Option(32, min=1, help="Samples per forward pass."),
    device: str = typer.Option("cpu", help="torch device (cpu, cuda, or auto: spread over all GPUs)."),
    control: str = typer.Option("auto", help="A model whose layer-wise statistics are compared with MODEL's: "
                                "change points both show come from how the model was made, not from training. "
                                "'auto': demo-grown (the demo before its fine-tuning) for --model demo, none "
                                "otherwise; 'none': no control."),
):
    """Regenerate every figure of the three papers on one model (cached: a rerun reuses collections).

    Under `accelerate launch -m vtanalysis figures ...` each process computes its part of the
    statistics and the main process draws the figures."""
    from .errors import VTAError
    from .experiments import make_figures
    from ._core.files import output_folder
    from .models import load_vlm

    try:
        procs = processes.current()
        output_folder(out)
        vlm = load_vlm(model, device=_process_device(procs, device))
        control = {"auto": "demo-grown" if model == "demo" else None, "none": None}.get(control, control)
        control_vlm = None if control is None else load_vlm(control, device=_process_device(procs, device))
        if data is None and procs.main:
            _demo_heldout(None, out / "cache" / "data", samples)
        procs.wait()  # the demo's scenes are written by the main process
        made = make_figures(vlm, data or out / "cache" / "data", out, only=only, samples=samples,
                            batch_size=batch_size, processes=procs, control=control_vlm)
    except VTAError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2)
    for name, paths in made.items():
        print(f"{name}: " + ", ".join(str(p) for p in paths))


@app.command("causal", cls=_ListsRegistered)
def causal_cmd(
    model: str = typer.Option("demo", help=MODEL_HELP),
    data: Path = typer.Option(None, help="Dataset folder in the standard format. Default for the demo model: its "
                              "held-out scenes, written to OUT/data."),
    out: Path = typer.Option(..., help="Output folder; rerun with the same folder to resume."),
    how: str = typer.Option("drop", help="Ablation: drop or mask (from --layer on), zero or mean (input embeddings)."),
    layer: int = typer.Option(0, help="First decoder layer without the ablated tokens (drop, mask)."),
    block: int = typer.Option(1, min=1, help="Ablate b x b blocks of each grid instead of single tokens."),
    measure: str = typer.Option("kl", help="kl (next-token KL) or logprob_drop (of the explained answer)."),
    method: list[str] = typer.Option(None, help="Score this method against the causal oracle (repeatable): {methods}."),
    keep: str = typer.Option("0.1", help="The methods' budget: a ratio like 0.1 or a token count like 64."),
    knockout: bool = typer.Option(False, help="Also knock out image->question, image->last, question->last and "
                                  "image->text in sliding windows of layers."),
    window: int = typer.Option(None, min=1, help="Knockout window in layers (default: a quarter of the depth)."),
    batch_size: int = typer.Option(4, min=1, help="Samples per part (one JSON file in OUT/parts)."),
    limit: int = typer.Option(None, min=1, help="Use only the first N samples."),
    device: str = typer.Option("cpu", help="torch device (cpu, cuda, or auto: spread over all GPUs)."),
):
    """Which image tokens does the answer depend on? Causal importance maps, agreement of methods with
    the causal oracle and attention knockout, over a dataset (resumable; `vtanalysis.causal`)."""
    from .causal.dataset import analyse
    from .errors import VTAError
    from ._core.files import output_folder
    from .models import load_vlm

    try:
        output_folder(out)
        vlm = load_vlm(model, device=device)
        if data is None:
            data = _demo_heldout(model, out / "data", limit or 16)
        summary = analyse(vlm, data, out, how=how, layer=layer, block=block, measure=measure,
                          methods=tuple(method or ()), keep=_parse_keep(keep), knockout=knockout, window=window,
                          batch_size=batch_size, limit=limit)
    except VTAError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2)
    console.print(f"explained {summary['samples']} answers -> {out} (importance.jsonl, importance.png"
                  + (", agreement.csv" if method else "") + (", knockout.csv" if knockout else "") + ", summary.json)")
    for name, m in summary["methods"].items():
        share = "n/a" if m["share"] is None else f"{m['share']:.2f}"
        console.print(f"  {name}: KL {m['effect']:.3f} (random {m['random']:.3f}, oracle {m['oracle']:.3f}); "
                      f"share of the oracle recovered {share}, recall {m['recall']:.2f}")


@app.command("eval", cls=_ListsRegistered)
def eval_cmd(
    model: str = typer.Option("demo", help=MODEL_HELP),
    data: Path = typer.Option(None, help="Dataset folder (images + questions.jsonl with answers). Default for "
                              "the demo model: its held-out split of generated scenes."),
    samples: int = typer.Option(500, min=1, help="Evaluate the first N samples."),
    method: str = typer.Option("none", help="Pruning method: {methods} (`vtanalysis methods` says what each does)."),
    keep: str = typer.Option("1.0", help="Ratio in (0, 1] or a token count."),
    batch_size: int = typer.Option(16, min=1, help="Samples per batch."),
    knob: list[str] = typer.Option(None, help="A method option as name=value, e.g. layer=3 or seed=1 "
                                   "(repeatable; `vtanalysis methods` lists each method's)."),
    device: str = typer.Option("cpu", help="torch device (cpu, cuda, or auto: spread over all GPUs)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    baselines: bool = typer.Option(True, help="With a pruning method, also run the random, uniform and pool "
                                   "baselines at the same keep (2025 studies found them competitive)."),
    out: Path = typer.Option(None, help="Keep every answer in OUT/<method>-keep<keep>/ (one JSON line per sample, "
                             "written per batch; a rerun resumes). Needed under `accelerate launch`."),
):
    """Exact-match accuracy overall and per question type, FLOPs ratio and time, optionally pruned.

    Under `accelerate launch -m vtanalysis eval --out DIR ...` each process answers its part of the
    samples and the main process prints the result over all of them."""
    import tempfile

    from .data.dataset import read_samples
    from .errors import VTAError
    from .experiments.evaluate import evaluate_many
    from .models import load_vlm

    try:
        procs = processes.current()
        if procs.world > 1 and out is None:
            raise VTAError("several processes need --out DIR: each writes its answers there and the main process "
                           "merges them.")
        vlm = load_vlm(model, device=_process_device(procs, device))
        ratio = _parse_keep(keep)
        with tempfile.TemporaryDirectory(prefix="vta-heldout-") as scratch:  # removed afterwards
            if data is None:
                data = out / "data" if out is not None else Path(scratch)
                if procs.main:
                    _demo_heldout(model, data, samples)
                procs.wait()
            rows = read_samples(data)[:samples]

            names = [method] + [base for base in ("random", "uniform", "pool")
                                if baselines and method not in ("none", "random", "uniform", "pool")]
            runs = [{"method": name, "keep": ratio, "knobs": _parse_knobs(knob) if name == method else {}}
                    for name in names]
            # one pass over the samples: each batch prepared once for the method and its baselines
            result, *rest = evaluate_many(vlm, rows, runs, batch_size=batch_size, progress=not json_out,
                                          records=None if out is None else [out / f"{n}-keep{keep}" for n in names],
                                          processes=procs)
            others = dict(zip(names[1:], rest))
            for r in rest:
                r.pop("predictions")
    except VTAError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2)
    if not procs.main:
        return
    result.pop("predictions")
    result["model"] = model
    if others:
        result["baselines"] = others
    if json_out:
        print(json.dumps(result))
        return
    print(f"{model} on {len(rows)} samples, method {method}, keep {_keep_words(ratio)}")
    print(f"accuracy {result['accuracy']:.3f}; FLOPs ratio {result['flops_ratio']:.3f}; "
          f"prefill {result['prefill_s']:.2f}s, decode {result['decode_s']:.2f}s")
    for t, acc in result["per_type"].items():
        print(f"  {t:<12}{acc:.3f}  (n={result['counts'][t]})")
    for base, r in others.items():
        print(f"baseline {base:<8} accuracy {r['accuracy']:.3f}; FLOPs ratio {r['flops_ratio']:.3f}; "
              f"prefill {r['prefill_s']:.2f}s")


@app.command("lmms-task")
def lmms_task_cmd(
    out: Path = typer.Argument(Path("lmms_tasks"), help="Folder to write the task into (lmms-eval's --include_path)."),
    images: int = typer.Option(50, min=1, help="Held-out scenes (about 3.3 questions each)."),
    seed: int = typer.Option(0, help="First scene seed (seeds below 1,000,000 are held out from training)."),
):
    """Write the offline lmms-eval task `vtanalysis-shapes` (held-out shapes scenes, exact match), to
    check an lmms-eval setup without downloads."""
    from .integrations.lmms_task import TASK, write_task

    folder = write_task(out, images, seed=seed)
    print(f"wrote {folder}; run: lmms-eval --model vtanalysis --model_args pretrained=demo --tasks {TASK} "
          f"--include_path {folder}")


@app.command("report")
def report_cmd(
    folders: list[Path] = typer.Argument(..., help="lmms-eval --output_path folders (or *_results.json files)."),
    out: Path = typer.Option(None, help="Also write the table to this markdown file."),
):
    """Method x keep x task table from lmms-eval runs of `--model vtanalysis`: the metric (95 %
    interval), the FLOPs ratio and prefill time per sample from the plugin's records."""
    from .errors import VTAError
    from .integrations.lmms_report import collect, markdown

    try:
        table = markdown(collect(folders))
    except VTAError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2)
    print(table, end="")
    if out:
        out.write_text(table)


@app.command("train-demo")
def train_demo_cmd(
    recipe: str = typer.Option("grow", help="'grow' (the 16-layer model shipped as `demo`: the shipped small "
                               "demo's tower made contrastive, its 4-layer decoder grown to 16 and fine-tuned; "
                               "`vtanalysis.models.demo.train_grow`), 'small' (the 4-layer model shipped as "
                               "`demo-small`; `vtanalysis.models.demo.train_demo`) or 'deep' (a 16-layer LLaVA from "
                               "scratch: CLIP pretraining, then LLaVA's stages; `train_deep`; stalls at 0.55, kept "
                               "as the measured dead end)."),
    out: Path = typer.Option(None, help="Checkpoint folder; training resumes from it (default runs/demo-RECIPE)."),
    steps: int = typer.Option(None, min=0, help="Steps of the last stage (grow: instruction tuning, default 1200; deep: "
                              "instruction tuning, default 4000; small: the whole model, default 4000)."),
    vision_steps: int = typer.Option(None, min=0, help="Steps of the vision stage (grow: the contrastive tower, "
                                     "default 400; deep: contrastive CLIP, default 1000; small: per-patch losses, "
                                     "default 1000)."),
    align_steps: int = typer.Option(None, min=0, help="deep only: projector alignment steps on captions (default 300)."),
    batch_size: int = typer.Option(32, min=1, help="Conversations per LLM step."),
    lr: float = typer.Option(None, help="Peak learning rate of the LLM stage(s) (grow: the grown copies, "
                              "1e-3; deep 1e-3, small 2e-3)."),
    seed: int = typer.Option(0, help="Initialisation and data-order seed."),
    device: str = typer.Option("cpu", help="Where to train: cpu or cuda (grow and deep)."),
    minutes: float = typer.Option(None, min=0, help="grow and deep: stop cleanly after this many minutes; rerun the "
                                  "same command to resume."),
    resume_from: Path = typer.Option(None, help="grow and deep: when OUT has no checkpoint, go on from these "
                                     "exported weights (`train_deep.export_weights`; the repository keeps the shipped "
                                     "run's in training/demo-grow-fresh/weights.pt)."),
    save_to: Path = typer.Option(None, help="Where to save the trained model (default: OUT/model; load it with "
                                 "--model OUT/model. The package's own demo weights are never overwritten)."),
):
    """Train a demo LLaVA on generated scenes, resumably; saves it in Hugging Face format with its record."""
    import json

    from .models import demo

    if recipe not in ("grow", "deep", "small"):
        console.print(f"[red]error:[/red] --recipe {recipe!r}: use 'grow', 'deep' or 'small'.")
        raise typer.Exit(2)
    out = Path(out or f"runs/demo-{recipe}")
    target = Path(save_to or out / "model")
    if target.resolve() in (Path(demo.WEIGHTS).resolve(), Path(demo.SMALL_WEIGHTS).resolve()):
        console.print("[red]error:[/red] --save-to names the package's shipped demo weights; save elsewhere and "
                      "load with --model FOLDER (the shipped demo stays as released).")
        raise typer.Exit(2)
    if recipe == "grow":
        from dataclasses import replace

        from .models.demo import train_deep, train_grow

        r = replace(train_grow.SHIPPED, seed=seed, batch_size=batch_size,
                    **{k: v for k, v in {"tower_steps": vision_steps, "instruct_steps": steps, "lr": lr}.items()
                       if v is not None})
        result = train_grow.train(out, r, device=_checked_device(device), minutes=minutes, resume_from=resume_from,
                                  training_json=out / "training.json")
        if not result["finished"]:
            print(f"stopped at stage {result['stage']} step {result['step']}; rerun the same command to resume")
            return
        vlm, clip, _ = train_grow.from_export(train_deep.export_weights(out, out / "weights.pt"))
        train_grow.save_model(vlm, clip, target, out / "training.json")
        print(f"saved to {target} (metrics.json: held-out accuracy per type, attention in mask per layer)")
        return
    if recipe == "deep":
        from .models.demo import train_deep

        defaults = train_deep.Recipe()
        r = train_deep.Recipe(clip_steps=defaults.clip_steps if vision_steps is None else vision_steps,
                              align_steps=defaults.align_steps if align_steps is None else align_steps,
                              instruct_steps=defaults.instruct_steps if steps is None else steps,
                              batch_size=batch_size, lr=defaults.lr if lr is None else lr, seed=seed)
        result = train_deep.train(out, r, device=_checked_device(device), minutes=minutes, resume_from=resume_from)
        if not result["finished"]:
            print(f"stopped at stage {result['stage']} step {result['step']}; rerun the same command to resume")
            return
        train_deep.save(result, target, r, device)
    else:
        from .models.demo import train_demo

        steps, vision_steps = 4000 if steps is None else steps, 1000 if vision_steps is None else vision_steps
        lr = 2e-3 if lr is None else lr
        result = train_demo.train(out, steps=steps, vision_steps=vision_steps, batch_size=batch_size, lr=lr, seed=seed)
        result["vlm"].model.save_pretrained(target)
        result["vlm"].processor.save_pretrained(target)
        (Path(target) / "training.json").write_text(json.dumps(
            {"steps": steps, "vision_steps": vision_steps, "batch_size": batch_size, "lr": lr, "seed": seed,
             "wall_minutes": result["minutes"], "history": result["history"]}, indent=1))
    from .models.demo import train_demo

    train_demo.report(result["vlm"], target)
    print(f"saved to {target} (metrics.json: held-out accuracy per type, attention in mask per layer)")


def _checked_device(device: str) -> str:
    from .models.loading import checked_device as checked

    try:
        return str(checked(device))
    except Exception as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None


if __name__ == "__main__":
    app()
