"""AdaptPrune's adaptive NMS: our parallel-rounds implementation vs a straightforward per-step loop.

Both have the same semantics (tests check equal picks); the loop makes one pick per step (a
host read of the argmax each time) and recomputes the factors against all N tokens; ours picks
every local maximum of a round at once, on the scores' device, with a host check only every
few rounds. Keep 10 %, keys of width 4096 (LLaVA-1.5-7B's k_proj output), default knobs, scores
either uniform random or attention-like (softmax of 2 x Gaussian noise). Prints the median CPU
time of each, and the counts that decide GPU time: aten ops dispatched (kernel launches) and
host round trips, at 576 (24x24), 2,880 (48x60) and 10,000 (100x100) tokens.

    python benchmarks/nms_selection.py
"""
import statistics
import time

import torch

from vtanalysis.perf import DispatchCounter, HostRoundTrips
from vtanalysis.prune.methods.adaptprune import adaptive_nms, adaptive_nms_reference

GRIDS = [(24, 24), (48, 60), (100, 100)]


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def counted(fn):
    with HostRoundTrips() as trips, DispatchCounter([]) as ops:
        fn()
    return ops.outside, trips.count


def main():
    torch.manual_seed(0)
    print(f"{'tokens':>8}{'grid':>10}{'scores':>10}{'keep':>6}{'ours ms':>10}{'loop ms':>10}{'speed-up':>10}"
          f"{'ours ops':>10}{'loop ops':>10}{'ours trips':>12}{'loop trips':>12}{'same picks':>12}")
    for h, w in GRIDS:
        n = h * w
        keys = torch.randn(n, 4096)
        for kind, scores in (("uniform", torch.rand(n)), ("attention", torch.softmax(2 * torch.randn(n), 0))):
            keep = n // 10
            repeats = 5 if n < 5000 else 2
            ours, a = timed(lambda: adaptive_nms(scores, keys, (h, w), keep), repeats)
            loop, b = timed(lambda: adaptive_nms_reference(scores, keys, (h, w), keep), repeats)
            ops_ours, trips_ours = counted(lambda: adaptive_nms(scores, keys, (h, w), keep))
            ops_loop, trips_loop = counted(lambda: adaptive_nms_reference(scores, keys, (h, w), keep))
            print(f"{n:>8}{f'{h}x{w}':>10}{kind:>10}{keep:>6}{ours * 1e3:>10.1f}{loop * 1e3:>10.1f}{loop / ours:>9.1f}x"
                  f"{ops_ours:>10}{ops_loop:>10}{trips_ours:>12}{trips_loop:>12}{str(torch.equal(a, b)):>12}")


if __name__ == "__main__":
    main()
