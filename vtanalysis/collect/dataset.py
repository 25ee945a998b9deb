"""Dataset-scale collection: streaming mean attention maps, checkpointed after every batch.

Output folder:
    state.safetensors   running sums + which sample ids are done (one file, replaced atomically)
    samples.jsonl       one line per sample: id, type, token counts, per-layer image-attention mass and
                        the last row's shift between adjacent layers (`layer_shift`)
    skipped.jsonl       samples that could not be processed (e.g. an undecodable image), with why
    mean_attention.safetensors, summary.json, mean_image_attention.png   written at the end

A skipped sample is also named, with why, on the terminal (stderr) when it is skipped, and in
the summary (`skipped`: the first `SUMMARY_SKIPPED` of them; `n_skipped` counts all).

An interrupted run restarted with the same arguments continues where the last checkpoint
left off: done samples are skipped, and `samples.jsonl` is cut back to the checkpoint, so no
sample is lost or counted twice.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..data.dataset import Sample, read_samples
from ..errors import VTAError
from .._core.files import atomic_write, output_folder
from .._core.processes import ONE, Processes, shard
from .record import SampleAttention, record_attention

STATE = "state.safetensors"
SAMPLES = "samples.jsonl"
SKIPPED = "skipped.jsonl"
SHARD = "shard.json"  # a shard's rank, process count and number of samples (its part of the dataset)
SUMMARY_SKIPPED = 100  # skipped samples named in summary.json (skipped.jsonl has every one)


def grid_key(grid) -> str:
    """Accumulator key of a grid: kind and shape, e.g. 'image_24x24' or 'tiles_48x36'."""
    return f"{grid.name}_{grid.shape[0]}x{grid.shape[1]}"


class MeanMaps:
    """Running sums of image attention folded onto patch grids.

    For each grid key, `sums[key]` is [2, n_layers, h, w]: index 0 sums the last prompt token's
    row, index 1 the mean over all text-query rows. `mass` is [2, n_layers]: the same two rows'
    total attention on image tokens. Means are sums / counts.
    """

    def __init__(self, sums=None, counts=None, mass=None, n=0):
        self.sums: dict[str, torch.Tensor] = sums or {}
        self.counts: dict[str, int] = counts or {}
        self.mass = mass
        self.n = n

    def add(self, sample: SampleAttention) -> dict:
        t2i = sample.text_to_image.double()  # [L, T, N]
        rows = torch.stack([t2i[:, -1], t2i.mean(1)])  # [2, L, N]
        for grid in sample.layout.grids:
            key = grid_key(grid)
            folded = grid.to_map(rows)
            self.sums[key] = self.sums.get(key, 0) + folded
            self.counts[key] = self.counts.get(key, 0) + 1
        mass = rows.sum(-1)  # [2, L]
        self.mass = mass if self.mass is None else self.mass + mass
        self.n += 1
        return {"last_row_image_mass": [round(float(x), 6) for x in mass[0]],
                "text_rows_image_mass": [round(float(x), 6) for x in mass[1]],
                **layer_shift(t2i[:, -1])}

    def means(self) -> dict[str, torch.Tensor]:
        out = {key: (s / self.counts[key]).float() for key, s in self.sums.items()}
        if self.mass is not None:
            out["image_mass"] = (self.mass / self.n).float()
        return out


def layer_shift(rows: torch.Tensor, top: float = 0.1) -> dict:
    """How the last row's image attention moves between adjacent layers (AdaptInfer's shift).

    rows: [L, N] attention of one query over the image tokens per layer. With p_l = rows[l] / sum
    (a distribution over image tokens) and K_l its top-k set (k = max(1, round(top * N))):
        js[l]      = JS(p_{l-1} || p_l) in nats (0 .. ln 2); js[0] = 0
        overlap[l] = |K_{l-1} & K_l| / k;                     overlap[0] = 1
    """
    p = rows.double().clamp_min(0)
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-30)
    m = (p[1:] + p[:-1]) / 2
    kl = lambda a, b: (a * (a.clamp_min(1e-30) / b.clamp_min(1e-30)).log()).sum(-1)  # noqa: E731
    js = torch.cat([torch.zeros(1, dtype=p.dtype), (kl(p[1:], m) + kl(p[:-1], m)) / 2])
    k = max(1, round(top * p.shape[-1]))
    top_sets = torch.zeros_like(p, dtype=torch.bool).scatter_(-1, p.topk(k, dim=-1).indices, True)
    overlap = torch.cat([torch.ones(1, dtype=p.dtype), (top_sets[1:] & top_sets[:-1]).sum(-1) / k])
    return {"last_row_js": [round(float(x), 6) for x in js], "last_row_topk_overlap": [round(float(x), 6) for x in overlap]}


def _save_state(out: Path, maps: MeanMaps, done: list[str], samples_bytes: int, meta: dict) -> None:
    tensors = {f"sum.{k}": v.contiguous() for k, v in maps.sums.items()}
    if maps.mass is not None:
        tensors["mass"] = maps.mass.contiguous()
    info = {"counts": json.dumps(maps.counts), "n": str(maps.n), "done": json.dumps(done),
            "samples_bytes": str(samples_bytes), "meta": json.dumps(meta)}
    atomic_write(out / STATE, lambda p: save_file(tensors, str(p), metadata=info))


def _load_state(out: Path):
    try:
        with safe_open(str(out / STATE), framework="pt") as f:
            info = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise VTAError(f"{out / STATE} is corrupt ({type(err).__name__}: {err}); delete the folder {out} and run "
                       "again to collect it anew (other shards and collections are kept).") from None
    sums = {k[len("sum."):]: v for k, v in tensors.items() if k.startswith("sum.")}
    maps = MeanMaps(sums, json.loads(info["counts"]), tensors.get("mass"), int(info["n"]))
    return maps, json.loads(info["done"]), int(info["samples_bytes"]), json.loads(info["meta"])


def _append(path: Path, rows: list[dict]) -> int:
    """Append JSON lines durably; return the file's new size."""
    with open(path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())
        return f.tell()


def shard_folder(out: Path, rank: int, world: int) -> Path:
    return Path(out) / f"shard-{rank}-of-{world}"


def collect_dataset(vlm, data: str | Path, out: str | Path, *, batch_size: int = 4, layers="all",
                    limit: int | None = None, types: list[str] | None = None, save_records: bool = False,
                    progress: bool = True, process: tuple[int, int] = (0, 1), plot: bool = True) -> dict:
    """Record attention over a dataset folder and accumulate mean maps; resumable.

    Args:
        vlm: a `VLM`.
        data: a dataset folder (images + questions.jsonl; see `vtanalysis.data.dataset`).
        out: output folder; if it holds a checkpoint of the same model and layers, the run resumes.
        batch_size: samples per forward pass (padded on the left).
        layers: "all" or a list of decoder-layer indices.
        limit: use only the first `limit` samples (after the `types` filter).
        types: keep only samples of these question types (e.g. one task of a benchmark).
        save_records: also save every batch's full `AttentionRecord` under out/records/.
        process: (rank, number of processes): with more than one, this process collects its `shard`
            of the samples into out/shard-RANK-of-N/ (resumable on its own) and writes no means;
            `merge_shards` then makes out/ as one process would have (`accelerate launch -m
            vtanalysis collect` does both).
        plot: draw out/mean_image_attention.png at the end (pipelines that draw their own figures
            from the means skip it: it costs more than a small model's collection).
    Returns:
        the summary dict (also written to out/summary.json; a shard's: its own counts).
    """
    if batch_size < 1:
        raise VTAError(f"batch_size must be >= 1, got {batch_size}.")
    if limit is not None and limit < 1:
        raise VTAError(f"limit must be >= 1 (or None for every sample), got {limit}.")
    out = output_folder(out)
    samples = read_samples(data)
    if types is not None:
        samples = [s for s in samples if s.type in types]
        if not samples:
            raise VTAError(f"no sample of type {list(types)} in '{data}'; its types: {sorted({s.type for s in read_samples(data)})}.")
    samples = samples[:limit]
    rank, world = process
    if not 0 <= rank < world:
        raise VTAError(f"process {process}: the rank must be in 0..world-1.")
    if world > 1:
        samples = shard(samples, rank, world)
        out = output_folder(shard_folder(out, rank, world))
        (out / SHARD).write_text(json.dumps({"rank": rank, "world": world, "n_samples": len(samples)}))
    wanted = list(range(vlm.num_layers)) if layers == "all" else sorted({vlm.check_layer(l) for l in layers})
    meta = {"model": vlm.name, "layers": wanted, "data": str(Path(data).resolve()), "types": list(types) if types else None}
    maps, done, offset = MeanMaps(), [], 0
    if (out / STATE).exists():
        maps, done, offset, old = _load_state(out)
        if (old["model"], old["layers"], old.get("types")) != (meta["model"], meta["layers"], meta["types"]):
            raise VTAError(f"'{out}' holds a collection of model {old['model']} over layers {old['layers']} "
                           f"(types {old.get('types')}); "
                           "pass a new --out folder (or delete this one) to start another collection.")
        if Path(old["data"]).resolve() != Path(data).resolve():
            raise VTAError(f"'{out}' holds a collection over the data folder '{old['data']}', not '{data}'; pass "
                           "that folder to resume, or a new --out folder to start another collection.")
    for name in (SAMPLES, SKIPPED):
        (out / name).touch()
    with open(out / SAMPLES, "r+") as f:
        f.truncate(offset)  # drop lines written after the last checkpoint
    done_set = set(done)
    todo = [s for s in samples if s.id not in done_set]
    bar = tqdm(total=len(samples), initial=len(samples) - len(todo), desc="collect", unit="sample",
               disable=not progress)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        rows, skipped = [], []
        for group, rec in _record_batch(vlm, chunk, wanted, skipped, out if save_records else None):
            for sample, att in zip(group, rec):
                rows.append({"id": sample.id, "type": sample.type, "n_image_tokens": att.layout.n_image_tokens,
                             "n_text": att.layout.n_text, **maps.add(att)})
        if skipped:
            _append(out / SKIPPED, skipped)
            for row in skipped:  # on the terminal too, above the progress bar, whatever `progress` is
                tqdm.write(f"collect: skipped sample '{row['id']}': {row['error']}", file=sys.stderr)
        offset = _append(out / SAMPLES, rows)
        done.extend(s.id for s in chunk)
        _save_state(out, maps, done, offset, meta)
        bar.update(len(chunk))
    bar.close()
    if world > 1:
        return {**meta, "n_samples": maps.n, "shard": [rank, world], "n_todo": len(samples)}
    return _finish(vlm, out, maps, meta, plot)


def merge_shards(vlm, out: str | Path, world: int, plot: bool = True) -> dict:
    """Merge the `world` finished shards of out/ (see `collect_dataset(process=)`) into out/: sums and
    counts added in float64 in shard order, samples.jsonl and skipped.jsonl concatenated in dataset
    order, then the means, summary and figure as a one-process run writes them."""
    out = Path(out)
    merged, done, rows, skipped, metas = MeanMaps(), [], [], [], []
    for rank in range(world):
        folder = shard_folder(out, rank, world)
        if not (folder / STATE).exists():
            raise VTAError(f"{folder} has no collection: shard {rank} of {world} has not run; relaunch with "
                           f"{world} processes to finish it.")
        maps, ids, offset, meta = _load_state(folder)
        expected = json.loads((folder / SHARD).read_text())["n_samples"]
        if len(ids) != expected:
            raise VTAError(f"shard {rank} of {world} ({folder}) has {len(ids)} of its {expected} samples: it was "
                           f"interrupted; relaunch with {world} processes and it resumes (finished shards are kept).")
        metas.append(meta)
        for key, value in maps.sums.items():
            merged.sums[key] = merged.sums.get(key, 0) + value
            merged.counts[key] = merged.counts.get(key, 0) + maps.counts[key]
        if maps.mass is not None:
            merged.mass = maps.mass if merged.mass is None else merged.mass + maps.mass
        merged.n += maps.n
        done += ids
        rows.append((folder / SAMPLES).read_bytes()[:offset])
        skipped.append((folder / SKIPPED).read_bytes())
    if any(m != metas[0] for m in metas):
        raise VTAError(f"the shards under {out} were collected with different settings ({metas}); collect again "
                       "into a new folder.")
    atomic_write(out / SAMPLES, lambda p: Path(p).write_bytes(b"".join(rows)))
    atomic_write(out / SKIPPED, lambda p: Path(p).write_bytes(b"".join(skipped)))
    _save_state(out, merged, done, (out / SAMPLES).stat().st_size, metas[0])
    return _finish(vlm, out, merged, metas[0], plot)


def collect_sharded(vlm, data: str | Path, out: str | Path, processes: Processes = ONE, **options) -> dict:
    """`collect_dataset` over `processes`: each collects its shard, the main process merges them into
    out/ (`merge_shards`), and every process returns the merged summary. One process: `collect_dataset`."""
    if processes.world == 1:
        return collect_dataset(vlm, data, out, **options)
    collect_dataset(vlm, data, out, process=(processes.rank, processes.world),
                    **{**options, "progress": options.get("progress", True) and processes.main})
    processes.wait()
    if processes.main:
        merge_shards(vlm, out, processes.world, plot=options.get("plot", True))
    processes.wait()
    return json.loads((Path(out) / "summary.json").read_text())


def _record_batch(vlm, chunk: list[Sample], layers, skipped: list, records_dir: Path | None):
    """Yield (samples, record) for a batch; if the batch fails on bad input, retry one by one and skip the bad."""
    def run(group):
        batch = vlm.prepare([s.image for s in group], [s.question for s in group])
        rec = record_attention(vlm, batch, layers=layers)
        if records_dir is not None:
            (records_dir / "records").mkdir(exist_ok=True)
            rec.save(records_dir / "records" / f"batch_{group[0].id}")
        return rec

    try:
        yield chunk, run(chunk)
    except VTAError:
        for sample in chunk:
            try:
                yield [sample], run([sample])
            except VTAError as err:
                skipped.append({"id": sample.id, "error": str(err)})


def _finish(vlm, out: Path, maps: MeanMaps, meta: dict, plot: bool = True) -> dict:
    from ..viz.attention_maps import plot_mean_maps

    means = maps.means()
    atomic_write(out / "mean_attention.safetensors", lambda p: save_file(means, str(p), metadata={"meta": json.dumps(meta)}))
    skipped = [json.loads(line) for line in (out / SKIPPED).read_text().splitlines() if line.strip()]
    n_skipped = len(skipped)
    mass = means["image_mass"][0].tolist() if "image_mass" in means else []  # ok-host: summary, after the collection
    summary = {**meta, "n_samples": maps.n, "n_skipped": n_skipped, "grids": maps.counts,
               "mean_last_row_image_mass": mass,
               "skipped": [{"id": r["id"], "error": r["error"]} for r in skipped[:SUMMARY_SKIPPED]]}
    atomic_write(out / "summary.json", lambda p: Path(p).write_text(json.dumps(summary, indent=2)))
    if maps.n and plot:
        plot_mean_maps(means, meta["layers"], title=f"{meta['model']} - mean text-to-image attention, n={maps.n}",
                       path=out / "mean_image_attention.png")
    return summary
