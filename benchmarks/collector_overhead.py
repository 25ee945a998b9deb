"""Cost of recording attention: prefill time and peak memory of three ways to run one prefill.

  (a) plain SDPA prefill                          vlm.model(**inputs)
  (b) SDPA prefill with vtanalysis' collector      vta.record_attention(vlm, batch)   (all layers)
  (c) eager prefill with output_attentions=True    what one-off scripts do

All three use the same call otherwise (use_cache=False, logits_to_keep=1, inference mode).
Models: random weights on the real LLaVA-1.5-7B config (576 image tokens) and the real
LLaVA-NeXT-Mistral-7B processor (2,928 image tokens for a 672x672 image), real LLM width
(hidden 4096, 32 heads, FFN 11008) and reduced depth; the vision tower is shrunk (it is the
same in all three modes). Times: one process runs the three modes round-robin (after a warm-up
of each) and reports medians. Peak memory: each mode's first pass in a process of its own.

Peak memory: on CUDA, torch.cuda.max_memory_allocated; on CPU, the process's peak resident set
(VmHWM, reset after loading) minus the resident set before the first pass, i.e. what the pass
adds on top of the weights. Prints each mode's figures and the ratios to (a).

    python benchmarks/collector_overhead.py                       # CPU: 2 layers, 2 timed runs
    python benchmarks/collector_overhead.py --layers 32 --dtype float16 --device cuda
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REALPROC = Path(__file__).resolve().parents[2] / "shared" / "realproc"
SHAPES = {"llava-1.5 (576 image tokens)": ("llava-1.5-7b-hf", 336),
          "llava-next (2,928 image tokens)": ("llava-v1.6-mistral-7b-hf", 672)}
MODES = {"a": "plain SDPA", "b": "SDPA + collector", "c": "eager + output_attentions"}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(field)


def worker(args) -> dict:
    """--mode a|b|c: peak memory of that mode's first pass; --mode time: all three timed, interleaved."""
    import numpy as np
    import torch

    import vtanalysis as vta
    from vtanalysis.models import tiny

    vlm = tiny.from_real_files(REALPROC / args.folder, hidden=4096, layers=args.layers, heads=32, kv_heads=32,
                               intermediate=11008, device=args.device, dtype=getattr(torch, args.dtype))
    image = np.random.default_rng(0).integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)
    batch = vlm.prepare([image], ["What is shown in this image? Answer in one word."])
    inputs = batch.model_inputs
    cuda = args.device.startswith("cuda")

    def run(mode):
        if mode == "b":
            vta.record_attention(vlm, batch)
            return
        vlm.model.set_attn_implementation("eager" if mode == "c" else "sdpa")
        with torch.inference_mode():
            vlm.model(**inputs, use_cache=False, logits_to_keep=1, output_attentions=mode == "c")
        vlm.model.set_attn_implementation("sdpa")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    info = {"seq_len": int(inputs["input_ids"].shape[1]), "n_image": batch.layouts[0].n_image_tokens}
    if args.mode != "time":
        # Read on the first pass after loading, before any earlier pass has grown the heap.
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set
            base = _rss_kib("VmRSS:") * 1024
        run(args.mode)
        sync()
        peak = torch.cuda.max_memory_allocated() if cuda else _rss_kib("VmHWM:") * 1024
        return {**info, "peak_bytes": peak - base}
    times = {m: [] for m in MODES}
    for m in MODES:
        run(m)  # warm-up
    for _ in range(args.repeats):  # round-robin, so drifts in machine load hit every mode alike
        for m in MODES:
            sync()
            t0 = time.perf_counter()
            run(m)
            sync()
            times[m].append(time.perf_counter() - t0)
    return {**info, "time_s": {m: statistics.median(t) for m, t in times.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2, help="decoder depth (32 = full 7B)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(worker(args)))
        return
    if not REALPROC.is_dir():
        sys.exit(f"needs the real processor files at {REALPROC}")
    print(f"device={args.device} dtype={args.dtype} decoder layers={args.layers} (hidden 4096, 32 heads), "
          f"median of {args.repeats} interleaved runs after a warm-up")
    for shape, (folder, size) in SHAPES.items():
        results = {}
        for mode in [*MODES, "time"]:
            cmd = [sys.executable, __file__, "--mode", mode, "--folder", folder, "--size", str(size),
                   "--layers", str(args.layers), "--repeats", str(args.repeats), "--device", args.device,
                   "--dtype", args.dtype]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        timing = results.pop("time")["time_s"]
        for mode in MODES:
            results[mode]["time_s"] = timing[mode]
        a = results["a"]
        print(f"\n{shape}: sequence {a['seq_len']} tokens, {a['n_image']} image tokens")
        print(f"  {'mode':<28}{'time s':>9}{'time / (a)':>12}{'peak MiB':>11}{'peak / (a)':>12}")
        for mode, r in results.items():
            print(f"  ({mode}) {MODES[mode]:<24}{r['time_s']:>9.3f}{r['time_s'] / a['time_s']:>12.2f}"
                  f"{r['peak_bytes'] / 2**20:>11.1f}{r['peak_bytes'] / a['peak_bytes']:>12.2f}")


if __name__ == "__main__":
    main()
