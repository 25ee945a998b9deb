"""`vtanalysis report`: the papers' tables (AdaptPrune Table 1, AdaFV Table 8: method x keep x task)
from lmms-eval output folders of `--model vtanalysis` runs, with FLOPs and latency from the
plugin's per-sample records."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import VTAError


def parse_model_args(text: str) -> dict[str, str]:
    """lmms-eval's "a=1,b=x" model arguments as a dict of strings."""
    pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
    return {k.strip(): v.strip() for k, v in (p for p in pairs if len(p) == 2)}


def _records(path: Path | None, task: str) -> tuple[float | None, float | None]:
    """(summed pruned / unpruned FLOPs, prefill seconds per sample) of `task` in a records file."""
    if path is None or not path.is_file():
        return None, None
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise VTAError(f"{path}: not a records file of the vtanalysis lmms-eval model ({err}).") from err
    rows = [r for r in rows if r.get("task") == task]
    if not rows:
        return None, None
    missing = {"flops", "flops_unpruned", "batch_prefill_s", "batch"} - set(rows[0])
    if missing:
        raise VTAError(f"{path} lacks {', '.join(sorted(missing))}: it was written by an older vtanalysis; "
                       "rerun the lmms-eval job.")
    flops = sum(r["flops"] for r in rows) / sum(r["flops_unpruned"] for r in rows)
    return flops, sum(r["batch_prefill_s"] / r["batch"] for r in rows) / len(rows)


def collect(folders: list[str | Path]) -> list[dict]:
    """One row per (results file, task): model, task, method, keep, metric, value, stderr,
    flops_ratio and prefill_ms (None where the run wrote no records), n."""
    files = sorted({f for d in folders for f in (Path(d).rglob("*_results.json") if Path(d).is_dir() else [Path(d)])})
    if not files:
        raise VTAError(f"no lmms-eval results (*_results.json) under {', '.join(map(str, folders))}; pass the "
                       "--output_path folders of lmms-eval runs.")
    rows = []
    for f in files:
        try:
            data = json.loads(f.read_text())
            config = data["config"]
        except (json.JSONDecodeError, KeyError) as err:
            raise VTAError(f"{f} is not an lmms-eval results file ({type(err).__name__}: {err}).") from err
        args = parse_model_args(config.get("model_args") or "")
        if config.get("model") != "vtanalysis":
            args.setdefault("method", f"({config.get('model')})")
        records = Path(args["records"]) if args.get("records") else None
        for task, metrics in data["results"].items():
            named = [k for k in metrics if k.endswith(",none") and "stderr" not in k and
                     isinstance(metrics[k], (int, float))]
            if not named:
                continue
            metric = named[0]
            flops, prefill = _records(records, task)
            rows.append({"model": args.get("pretrained", config.get("model")), "task": task,
                         "method": args.get("method", "none"), "keep": float(args.get("keep", 1.0)),
                         "metric": metric.split(",")[0], "value": metrics[metric],
                         "stderr": metrics.get(metric.replace(",", "_stderr,", 1)),
                         "flops_ratio": flops, "prefill_ms": None if prefill is None else 1000 * prefill,
                         "n": (data.get("n-samples", {}).get(task) or {}).get("effective")})
    return sorted(rows, key=lambda r: (r["model"], r["task"], r["method"] != "none", r["method"], -r["keep"]))


def markdown(rows: list[dict]) -> str:
    """A markdown table of `collect`'s rows."""
    def num(x, fmt):
        return "-" if x is None else format(x, fmt)

    lines = ["| model | task | method | keep | metric | value | FLOPs ratio | prefill ms / sample | n |",
             "|---|---|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        value = num(r["value"], ".4f") + (f" ± {1.96 * r['stderr']:.4f}" if isinstance(r["stderr"], float) else "")
        lines.append(f"| {r['model']} | {r['task']} | {r['method']} | {r['keep']:g} | {r['metric']} | {value} | "
                     f"{num(r['flops_ratio'], '.3f')} | {num(r['prefill_ms'], '.1f')} | {num(r['n'], 'd')} |")
    return "\n".join(lines) + "\n"
