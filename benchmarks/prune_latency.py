"""Prefill latency of pruned vs unpruned inference, beside the FLOPs ratio.

A random-weight model on the real LLaVA-1.5-7B config and processor (576 image tokens) at the
real LLM width (hidden 4096, 32 heads, FFN 11008), reduced depth on CPU (--layers; 32 = full
size on a GPU), shrunk vision tower. Every run goes through `vtanalysis.prune.run` with the KV
cache on, the same attention backend (SDPA), no attention outputs; "none" is the unpruned model
on the same path. Runs are interleaved round-robin after a warm-up of each; medians reported.
Columns: measured prefill time ratio to "none", the FLOPs ratio (formula in `prune.flops`), the
KV cache size after prefill + 1 token (measured from the cache tensors), and the peak memory that
one generate call adds above the loaded model, as ratios to "none". Peak memory: on CUDA
torch.cuda.max_memory_allocated per run; on CPU the peak resident-set growth of a fresh process
per configuration (the heap of earlier runs would hide it otherwise).

Methods: FastV, AdaptPrune, AdaptInfer (in the LLM), AdaFV (before the LLM) at keep 50/25/10 %.

    python benchmarks/prune_latency.py                      # CPU, 8 layers
    python benchmarks/prune_latency.py --layers 32 --device cuda --dtype float16
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from vtanalysis import prune
from vtanalysis.models import tiny

REALPROC = Path(__file__).resolve().parents[2] / "shared" / "realproc" / "llava-1.5-7b-hf"
METHODS = ["fastv", "adaptprune", "adaptinfer", "adafv"]
KEEPS = [0.5, 0.25, 0.1]


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(field)


def setup(args):
    vlm = tiny.from_real_files(REALPROC, hidden=4096, layers=args.layers, heads=32, kv_heads=32, intermediate=11008,
                               device=args.device, dtype=getattr(torch, args.dtype))
    image = np.random.default_rng(0).integers(0, 255, (336, 336, 3), dtype=np.uint8)
    return vlm, vlm.prepare([image], ["What is shown in this image? Answer in one word."])


def peak_bytes(vlm, batch, method, keep, cuda: bool) -> int:
    """Peak memory one generate call adds above what is allocated before it."""
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set
        base = _rss_kib("VmRSS:") * 1024
    prune.run(vlm, batch, method, keep, max_new_tokens=1)
    return (torch.cuda.max_memory_allocated() if cuda else _rss_kib("VmHWM:") * 1024) - base


def cpu_peak(args, config) -> int:
    """Peak of one configuration's first run, in a fresh process."""
    cmd = [sys.executable, __file__, "--layers", str(args.layers), "--device", args.device, "--dtype", args.dtype,
           "--peak-of", json.dumps(config)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--peak-of", help=argparse.SUPPRESS)  # worker: '["method", keep]'
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    vlm, batch = setup(args)
    if args.peak_of:
        print(json.dumps(peak_bytes(vlm, batch, *json.loads(args.peak_of), cuda=False)))
        return
    configs = [("none", 1.0)] + [(m, k) for m in METHODS for k in KEEPS]
    times = {c: [] for c in configs}
    results = {}
    for c in configs:  # warm-up
        results[c] = prune.run(vlm, batch, c[0], c[1], max_new_tokens=1)
    for _ in range(args.repeats):
        for c in configs:
            r = prune.run(vlm, batch, c[0], c[1], max_new_tokens=1)
            times[c].append(r.prefill_s)
    peaks = {c: peak_bytes(vlm, batch, *c, cuda=True) if cuda else cpu_peak(args, list(c)) for c in configs}
    base_t = statistics.median(times[("none", 1.0)])
    base_kv = results[("none", 1.0)].kv_cache_bytes
    print(f"LLaVA-1.5-7B width, {args.layers} layers, {args.device} {args.dtype}, "
          f"{batch.layouts[0].n_image_tokens} image tokens, median of {args.repeats} interleaved runs")
    print(f"{'method':<12}{'keep':>6}{'stages (layer:kept)':>26}{'prefill s':>11}{'time ratio':>12}"
          f"{'FLOPs ratio':>13}{'KV ratio':>10}{'peak MiB':>10}{'peak ratio':>12}")
    for c in configs:
        r, t = results[c], statistics.median(times[c])
        stages = " ".join(f"{l}:{k[0]}" for l, k in zip(r.stage_layers, r.kept_counts)) or "-"
        print(f"{c[0]:<12}{c[1]:>6}{stages:>26}{t:>11.3f}{t / base_t:>12.2f}{r.flops_ratio:>13.2f}"
              f"{r.kv_cache_bytes / base_kv:>10.2f}{peaks[c] / 2**20:>10.0f}{peaks[c] / peaks[('none', 1.0)]:>12.2f}")


if __name__ == "__main__":
    main()
