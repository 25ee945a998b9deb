"""What a pruned prefill asks of a GPU, counted on any machine: kernel launches and host round trips.

A 7B prefill of ~600 tokens on an H100 is launch-bound (about 24 ms for 32 layers), so the ops a
method dispatches and the host round trips it makes (each one stalls the stream) decide whether
pruning pays off there. Both are counts, not times, and do not depend on the machine or the
model's width, so this runs on CPU at tiny widths with the real token counts and depth:
random weights on the released LLaVA-1.5-7B and LLaVA-NeXT-Mistral-7B configs and processors
(576 / 2,928 image tokens), 32 decoder layers, batch 1.

Columns: aten ops (views excluded) dispatched by the language model's prefill call, its ratio to
the unpruned model; ops in the decoder layers that are not a stage boundary vs the same layers
unpruned (must be equal); host round trips made by vtanalysis' own code inside the prefill and
over the whole `prune.run` (setup and result included).

    python benchmarks/dispatch_counts.py [--methods fastv,adaptprune] [--layers 32]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from vtanalysis import VTAError, prune
from vtanalysis.models import tiny
from vtanalysis.perf import DispatchCounter, HostRoundTrips

REALPROC = Path(__file__).resolve().parents[2] / "shared" / "realproc"
SHAPES = {"llava-1.5": ("llava-1.5-7b-hf", 336), "llava-next": ("llava-v1.6-mistral-7b-hf", 672)}


def counts(vlm, batch, method, keep):
    lm = vlm.adapter.language_model(vlm.model)
    with DispatchCounter([lm, *vlm.decoder_layers]) as ops, HostRoundTrips(within=lm) as during:
        res = prune.run(vlm, batch, method, keep, max_new_tokens=1)
    with HostRoundTrips() as whole:
        prune.run(vlm, batch, method, keep, max_new_tokens=1)
    layers = ops.per_layer[1:]
    return {"total": ops.per_layer[0] + sum(layers), "layers": layers, "stages": res.stage_layers,
            "during": during.count, "whole": whole.count}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--methods", default="", help="comma-separated (default: every registered method)")
    parser.add_argument("--keeps", type=lambda s: [float(x) for x in s.split(",")], default=[0.5, 0.1])
    args = parser.parse_args()
    methods = [m for m in (args.methods.split(",") if args.methods else prune.methods()) if m != "none"]
    for shape, (folder, size) in SHAPES.items():
        vlm = tiny.from_real_files(REALPROC / folder, hidden=64, layers=args.layers, heads=4, kv_heads=2)
        image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
        batch = vlm.prepare([image], ["What is shown in this image? Answer in one word."])
        base = counts(vlm, batch, "none", 1.0)
        print(f"\n{shape}: {batch.layouts[0].n_image_tokens} image tokens, {args.layers} layers, batch 1; "
              f"unpruned prefill {base['total']} ops ({base['layers'][0]} per layer)")
        print(f"{'method':<24}{'keep':>6}{'prefill ops':>13}{'ratio':>7}{'other layers = unpruned':>25}"
              f"{'trips in prefill':>18}{'trips in run':>14}")
        for method in methods:
            for keep in args.keeps:
                try:
                    c = counts(vlm, batch, method, keep)
                except VTAError as err:  # e.g. PyramidDrop's average budget cannot go below 0.25
                    print(f"{method:<24}{keep:>6}  not run: {err}")
                    continue
                boundary = {k for layer in c["stages"] for k in (layer - 1, layer)}
                same = all(c["layers"][i] == base["layers"][i] for i in range(args.layers) if i not in boundary)
                print(f"{method:<24}{keep:>6}{c['total']:>13}{c['total'] / base['total']:>7.2f}{str(same):>25}"
                      f"{c['during']:>18}{c['whole']:>14}")
        with torch.no_grad():
            del vlm


if __name__ == "__main__":
    main()
