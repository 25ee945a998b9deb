"""Command-line interface: `vtanalysis --help`."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Record, analyse and prune visual-token attention in vision-language models.")
console = Console(stderr=True)


def _parse_layers(text: str):
    if text == "all":
        return "all"
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--layers takes 'all' or comma-separated integers like '0,2,-1', not {text!r}.")


@app.callback()
def main():
    """vtanalysis command line."""


@app.command()
def collect(
    model: str = typer.Option("tiny-llava", help="Hugging Face id, local folder, or a bundled name (tiny-llava, "
                              "tiny-llava-next, tiny-qwen2-vl)."),
    data: Path = typer.Option(Path("data/sample"), help="Dataset folder: images + questions.jsonl."),
    out: Path = typer.Option(..., help="Output folder; rerun with the same folder to resume."),
    batch_size: int = typer.Option(4, help="Samples per forward pass."),
    layers: str = typer.Option("all", help="'all' or comma-separated decoder-layer indices."),
    limit: int = typer.Option(None, help="Use only the first N samples."),
    device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda."),
    save_records: bool = typer.Option(False, help="Also keep every batch's full attention record."),
):
    """Record per-layer text-to-image attention over a dataset; writes mean maps, a figure and a summary."""
    from .collect.dataset import collect_dataset
    from .errors import VTAError
    from .models import load_vlm

    try:
        vlm = load_vlm(model, device=device)
        summary = collect_dataset(vlm, data, out, batch_size=batch_size, layers=_parse_layers(layers), limit=limit,
                                  save_records=save_records)
    except VTAError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2)
    console.print(f"collected {summary['n_samples']} samples ({summary['n_skipped']} skipped) "
                  f"over layers {summary['layers'][0]}..{summary['layers'][-1]} -> {out}")


if __name__ == "__main__":
    app()
