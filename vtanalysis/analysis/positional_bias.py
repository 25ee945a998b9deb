"""Positional bias of image attention (AdaptPrune Sec. 3, Fig. 2, 8, 9).

The mean text-to-image attention of each layer, folded back onto the patch grid over a
dataset, shows a fixed motif that hardly depends on the task. We measure that with the Pearson
correlation of two maps at the same layer,

    r_l(a, b) = corr(vec(M_l^a), vec(M_l^b))        M_l^x: [h, w] mean map of task x at layer l

and report, per pair of tasks, the mean over layers; 1 means the same motif.
Collections are made by `collect.collect_dataset` (one cached, resumable folder per task).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..collect.dataset import collect_sharded
from ..errors import VTAError
from .._core.processes import ONE, Processes

ROWS = {"last": 0, "text": 1}  # index into the collected maps: last prompt token, mean of text rows


def load_maps(collection: str | Path, rows: str = "last") -> tuple[torch.Tensor, list[int], str]:
    """The mean maps of a finished collection folder: ([L, h, w], model layers, grid key).

    With several grids (LLaVA-NeXT: base + tiles of varying shape) the grid every sample has
    (the one with the most samples) is used.
    """
    path = Path(collection) / "mean_attention.safetensors"
    if not path.is_file():
        raise VTAError(f"'{collection}' has no mean_attention.safetensors; run `vtanalysis collect` into it first.")
    means = load_file(str(path))
    summary = json.loads((Path(collection) / "summary.json").read_text())
    key = max(summary["grids"], key=summary["grids"].get)
    return means[key][ROWS[rows]], summary["layers"], key


def map_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson r of two stacks of maps over their last two dims: [..., h, w] x2 -> [...]."""
    x, y = a.flatten(-2).double(), b.flatten(-2).double()
    x, y = x - x.mean(-1, keepdim=True), y - y.mean(-1, keepdim=True)
    return ((x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1)).clamp_min(1e-30)).float()


def similarity_matrix(maps: dict[str, torch.Tensor]) -> tuple[list[str], torch.Tensor]:
    """Mean over layers of r_l between every pair of tasks: names, [K, K] (diagonal 1)."""
    names = list(maps)
    sim = torch.ones(len(names), len(names))
    for i, a in enumerate(names):
        for j, b in enumerate(names[:i]):
            sim[i, j] = sim[j, i] = map_correlation(maps[a], maps[b]).mean()
    return names, sim


def layer_consistency(maps: torch.Tensor) -> torch.Tensor:
    """[L, L] correlation between the maps of every pair of layers of one task ([L, h, w])."""
    return map_correlation(maps[:, None], maps[None, :])


def task_maps(vlm, data: str | Path, out: str | Path, types: list[str] | None, *, limit: int | None = None,
              batch_size: int = 8, rows: str = "last", progress: bool = True,
              processes: Processes = ONE, plot: bool = True) -> dict[str, torch.Tensor]:
    """Mean maps per question type, each collected into `out/<type>/` (reused when already there;
    with several processes, each collects its shard and the main one merges: `collect_sharded`;
    `plot`: each folder's mean_image_attention.png, as `collect_dataset`).

    Returns {type: [L, h, w]}; with `types` None (a dataset without types), one map named "all".
    """
    maps = {}
    for t in types or ["all"]:
        folder = Path(out) / t
        if not (folder / "mean_attention.safetensors").is_file() or _unfinished(folder, limit):
            collect_sharded(vlm, data, folder, processes, batch_size=batch_size, types=[t] if types else None,
                            limit=limit, progress=progress, plot=plot)
        maps[t] = load_maps(folder, rows)[0]
    return maps


def _unfinished(folder: Path, limit: int | None) -> bool:
    """True when a cached collection holds fewer samples than asked for (a rerun with larger --samples)."""
    summary = json.loads((folder / "summary.json").read_text())
    return limit is not None and summary["n_samples"] + summary["n_skipped"] < limit
