"""Prefill latency of pruned vs unpruned inference, beside the FLOPs ratio.

A random-weight model on the real LLaVA-1.5-7B config and processor (576 image tokens) at the
real LLM width (hidden 4096, 32 heads, FFN 11008), reduced depth on CPU (--layers; 32 = full
size on a GPU), shrunk vision tower. Every run goes through `vtanalysis.prune.run` with the KV
cache on, the same attention backend (SDPA), no attention outputs; "none" is the unpruned model
on the same path. Runs are interleaved round-robin after a warm-up of each; medians reported.
Columns: measured prefill time ratio to "none", the FLOPs ratio (formula in `prune.flops`), and
the KV cache size after prefill + 1 token (measured from the cache tensors) as a ratio.

Methods: FastV, AdaptPrune, AdaptInfer at keep 50 % / 25 % / 10 %. (AdaFV acts before the LLM and
is not in the engine yet.)

    python benchmarks/prune_latency.py                      # CPU, 8 layers
    python benchmarks/prune_latency.py --layers 32 --device cuda --dtype float16
"""
import argparse
import statistics
from pathlib import Path

import numpy as np
import torch

from vtanalysis import prune
from vtanalysis.models import tiny

REALPROC = Path(__file__).resolve().parents[2] / "shared" / "realproc" / "llava-1.5-7b-hf"
METHODS = ["fastv", "adaptprune", "adaptinfer"]
KEEPS = [0.5, 0.25, 0.1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    vlm = tiny.from_real_files(REALPROC, hidden=4096, layers=args.layers, heads=32, kv_heads=32, intermediate=11008,
                               device=args.device, dtype=getattr(torch, args.dtype))
    image = np.random.default_rng(0).integers(0, 255, (336, 336, 3), dtype=np.uint8)
    batch = vlm.prepare([image], ["What is shown in this image? Answer in one word."])
    configs = [("none", 1.0)] + [(m, k) for m in METHODS for k in KEEPS]
    times = {c: [] for c in configs}
    results = {}
    for c in configs:  # warm-up
        results[c] = prune.run(vlm, batch, c[0], c[1], max_new_tokens=1)
    for _ in range(args.repeats):
        for c in configs:
            r = prune.run(vlm, batch, c[0], c[1], max_new_tokens=1)
            times[c].append(r.prefill_s)
    base_t = statistics.median(times[("none", 1.0)])
    base_kv = results[("none", 1.0)].kv_cache_bytes
    print(f"LLaVA-1.5-7B width, {args.layers} layers, {args.device} {args.dtype}, "
          f"{batch.layouts[0].n_image_tokens} image tokens, median of {args.repeats} interleaved runs")
    print(f"{'method':<12}{'keep':>6}{'stages (layer:kept)':>26}{'prefill s':>11}{'time ratio':>12}"
          f"{'FLOPs ratio':>13}{'KV ratio':>10}")
    for c in configs:
        r, t = results[c], statistics.median(times[c])
        stages = " ".join(f"{l}:{k[0]}" for l, k in zip(r.stage_layers, r.kept_counts)) or "-"
        print(f"{c[0]:<12}{c[1]:>6}{stages:>26}{t:>11.3f}{t / base_t:>12.2f}{r.flops_ratio:>13.2f}"
              f"{r.kv_cache_bytes / base_kv:>10.2f}")


if __name__ == "__main__":
    main()
