"""What the causal analyses cost (issue 39), measured side by side in one run on the bundled demo.

  1. `causal.importance` at layer L/2 against layer 0: the layers before L/2 are recorded once per
     sample and not replayed per candidate, so the cost follows the layers that differ (target <= 0.65).
  2. batched `importance` over every image token against one `causal.ablate` per token (the
     same numbers, checked here): target >= 3x on 2 CPU cores.
  3. host round trips of `importance` with one candidate per forward, for 144 candidates and for
     9 (4x4 blocks): equal counts mean no round trip per candidate.
  4. `causal.knockout` in a window of layers: aten ops dispatched per decoder layer against the
     plain prefill; untouched layers must dispatch the same number.

Times are medians of `--repeats` interleaved runs (after a warm-up of each); a CPU time is not a
GPU claim, the ratios are what this prints.

    python benchmarks/causal_costs.py [--samples 2] [--repeats 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="demo-small", help="a load_vlm name; RESULTS.md's run is the 4-layer demo")
    a = ap.parse_args()

    import torch

    import vtanalysis as vta
    from vtanalysis import causal
    from vtanalysis.data import shapes
    from vtanalysis.data.dataset import read_samples
    from vtanalysis.perf import DispatchCounter, HostRoundTrips

    torch.set_num_threads(a.threads)
    vlm = vta.load_vlm(a.model)
    folder = tempfile.mkdtemp(prefix="vta-bench-")
    shapes.write_dataset(folder, n_images=max(1, a.samples // 4 + 1), seed=0, progress=False)
    samples = read_samples(folder)[:a.samples]
    batch = vlm.prepare([s.image for s in samples], [s.question for s in samples])
    ref = causal.reference(vlm, batch)
    n = batch.layouts[0].n_image_tokens
    half = vlm.num_layers // 2
    print(f"{vlm.name}: {vlm.num_layers} decoder layers, {n} image tokens, {a.samples} samples, "
          f"{a.threads} threads, medians of {a.repeats}")

    def per_token():
        out = torch.zeros(len(batch), n)
        for t in range(n):
            res = causal.ablate(vlm, batch, [torch.tensor([t])] * len(batch), ref=ref)
            out[:, t] = res.kl
        return out

    runs = {"importance, layer 0": lambda: causal.importance(vlm, batch, "drop", 0, ref=ref),
            f"importance, layer {half}": lambda: causal.importance(vlm, batch, "drop", half, ref=ref),
            "one ablate per token, layer 0": per_token}
    times = {name: [] for name in runs}
    results = {name: run() for name, run in runs.items()}  # warm-up, and the numbers compared below
    for _ in range(a.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    for name, t in med.items():
        print(f"  {name:32s} {t:8.2f} s")
    same = torch.allclose(results["importance, layer 0"], results["one ablate per token, layer 0"], atol=2e-5)
    print(f"1. importance at layer {half} / layer 0: {med[f'importance, layer {half}'] / med['importance, layer 0']:.2f}"
          "  (target <= 0.65)")
    print(f"2. one ablate per token / batched importance: "
          f"{med['one ablate per token, layer 0'] / med['importance, layer 0']:.1f}x  (target >= 3x); "
          f"same effects: {same}")

    trips = {}
    for block in (1, 4):
        with HostRoundTrips() as counted:
            causal.importance(vlm, batch, ref=ref, block=block, chunk=1)
        trips[block] = counted.count
    print(f"3. host round trips, one candidate per forward: {trips[1]} for {n} candidates per sample, "
          f"{trips[4]} for {(n // 16)} blocks per sample (equal: none per candidate)")

    lm_inputs = batch.to(vlm.device).model_inputs
    window = [half, half + 1] if half + 1 < vlm.num_layers else [half]
    with DispatchCounter(vlm.decoder_layers) as plain, torch.inference_mode():
        vlm.model(**lm_inputs)
    from vtanalysis.causal.edges import Knockout, parse_edges
    with DispatchCounter(vlm.decoder_layers) as knocked, torch.inference_mode(), \
            Knockout(vlm, batch, parse_edges("image->last", batch), window):
        vlm.model(**lm_inputs)
    print(f"4. knockout image->last in layers {window}: ops per layer {knocked.per_layer} "
          f"(plain prefill {plain.per_layer}); untouched layers equal: "
          f"{all(k == p for l, (k, p) in enumerate(zip(knocked.per_layer, plain.per_layer)) if l not in window)}")


if __name__ == "__main__":
    main()
