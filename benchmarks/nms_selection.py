"""AdaptPrune's adaptive NMS: our windowed implementation vs a straightforward per-step loop.

Both have the same semantics (tests check equal picks); the loop recomputes distance and
similarity factors against all N tokens at every step, ours only within the pick's window.
Keep 10 %, keys of width 4096 (LLaVA-1.5-7B's k_proj output), default knobs. Prints the median
time of each and the speed-up, at 576 (24x24), 2,880 (48x60) and 10,000 (100x100) tokens.

    python benchmarks/nms_selection.py
"""
import statistics
import time

import torch

from vtanalysis.prune.adaptprune import adaptive_nms, adaptive_nms_reference

GRIDS = [(24, 24), (48, 60), (100, 100)]


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main():
    torch.manual_seed(0)
    print(f"{'tokens':>8}{'grid':>10}{'keep':>6}{'ours ms':>10}{'loop ms':>10}{'speed-up':>10}{'same picks':>12}")
    for h, w in GRIDS:
        n = h * w
        scores, keys = torch.rand(n), torch.randn(n, 4096)
        keep = n // 10
        repeats = 5 if n < 5000 else 2
        ours, a = timed(lambda: adaptive_nms(scores, keys, (h, w), keep), repeats)
        loop, b = timed(lambda: adaptive_nms_reference(scores, keys, (h, w), keep), repeats)
        print(f"{n:>8}{f'{h}x{w}':>10}{keep:>6}{ours * 1e3:>10.1f}{loop * 1e3:>10.1f}{loop / ours:>9.1f}x"
              f"{str(torch.equal(a, b)):>12}")


if __name__ == "__main__":
    main()
