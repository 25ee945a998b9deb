"""Latency of pruned vs unpruned inference on a GPU, every method, beside a hand-written FastV loop.

Full-size random-weight models built directly on the GPU from the released configs in
`realproc` (LLaVA-1.5-7B: 576 image tokens at 336 px; LLaVA-NeXT-Mistral-7B: 2,928 image tokens at
672 px), bfloat16, SDPA, KV cache on, no attention outputs. One process per shape; within it every
configuration runs once as a warm-up, then all run round-robin `--repeats` times (so drifts hit
them alike) and medians are printed. Columns, each also as a ratio to the unpruned model:

  wall ms     the language model's prefill call, host clock, synchronised before and after
  gpu ms      the same call between CUDA events (what `RunResult.prefill_s` reports)
  FLOPs       the prefill FLOPs ratio (formula in `vtanalysis.prune.flops`)
  decode ms   time per generated token after the first (CUDA events), `--new-tokens` in all

`anchor-fastv` is a plain loop over the same decoder layers: layers < K on all tokens with
attention_mask=None, last-row attention of layer K-1 from its own q/k, the kept hidden states and
rotary tables gathered once, layers >= K with attention_mask=None. Its logits are checked
against `prune.run(..., "fastv")` before timing. A second table times `record_attention` against a
plain SDPA prefill and eager `output_attentions=True`, with peak memory above the weights.

    # on the GPU machine, after copying ../shared/realproc into the checkout as .realproc:
    python benchmarks/gpu_latency.py --realproc .realproc --repeats 5
    # CPU smoke run of the same code at tiny widths (numbers mean nothing there):
    python benchmarks/gpu_latency.py --device cpu --small --repeats 1 --methods fastv,adaptprune
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import vtanalysis as vta
from vtanalysis import prune
from vtanalysis.models import tiny
from vtanalysis.prune import fastv

SHAPES = {"llava-1.5": ("llava-1.5-7b-hf", 336), "llava-next": ("llava-v1.6-mistral-7b-hf", 672)}
QUESTION = "What is shown in this image? Answer in one word."


def build(folder: Path, args):
    if args.small:
        return tiny.from_real_files(folder, hidden=128, layers=4, heads=4, kv_heads=2, device=args.device)
    return tiny.from_real_files(folder, full_size=True, device=args.device, dtype=torch.bfloat16)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PrefillClock:
    """Host-clock time of a module's first call (synchronised before and after)."""

    def __init__(self, module, device):
        self.device, self.seconds, self.calls = device, None, 0
        self.handles = [module.register_forward_pre_hook(self._start), module.register_forward_hook(self._stop)]

    def _start(self, *_):
        self.calls += 1
        if self.calls == 1:
            sync(self.device)
            self.t0 = time.perf_counter()

    def _stop(self, *_):
        if self.calls == 1:
            sync(self.device)
            self.seconds = time.perf_counter() - self.t0

    def remove(self):
        for h in self.handles:
            h.remove()


def timed_run(vlm, batch, method, keep, new_tokens):
    clock = PrefillClock(vlm.adapter.language_model(vlm.model), vlm.device)
    try:
        res = prune.run(vlm, batch, method, keep, max_new_tokens=new_tokens)
    finally:
        clock.remove()
    steps = max(1, res.token_ids.shape[1] - 1)
    return {"wall": clock.seconds, "gpu": res.prefill_s, "flops": res.flops_ratio, "decode": res.decode_s / steps,
            "logits": res.logits}


@torch.inference_mode()
def anchor_fastv(vlm, batch, embeds, keep: int, layer: int = fastv.LAYER):
    """Hand-written FastV on a batch of same-layout samples (no padding): [B, vocab] logits."""
    lm = vlm.adapter.language_model(vlm.model)
    rope_module = sys.modules[type(lm.layers[0].self_attn).__module__]
    b, n = embeds.shape[:2]
    pos = torch.arange(n, device=embeds.device)[None].expand(b, n)
    cos, sin = lm.rotary_emb(embeds, position_ids=pos)
    h = embeds
    for block in lm.layers[: layer - 1]:
        h = block(h, attention_mask=None, position_ids=pos, position_embeddings=(cos, sin))
    attn = lm.layers[layer - 1].self_attn
    normed = lm.layers[layer - 1].input_layernorm(h)
    hd = attn.head_dim
    q = attn.q_proj(normed[:, -1:]).view(b, 1, -1, hd).transpose(1, 2)
    k = attn.k_proj(normed).view(b, n, -1, hd).transpose(1, 2)
    q, _ = rope_module.apply_rotary_pos_emb(q, q, cos[:, -1:], sin[:, -1:])
    k, _ = rope_module.apply_rotary_pos_emb(k, k, cos, sin)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * attn.scaling, dim=-1)[:, :, 0].mean(1)
    h = lm.layers[layer - 1](h, attention_mask=None, position_ids=pos, position_embeddings=(cos, sin))
    image = batch.layouts[0].image_positions.to(embeds.device)
    top = image[torch.topk(scores[:, image], keep, dim=-1).indices]  # [B, keep]
    kept = torch.ones(b, n, dtype=torch.bool, device=embeds.device)
    kept[:, image] = False
    kept.scatter_(1, top, True)
    idx = torch.sort((~kept).to(torch.uint8), dim=1, stable=True).indices[:, : n - len(image) + keep]
    h = h.gather(1, idx[..., None].expand(-1, -1, h.shape[-1]))
    cos = cos.expand(b, -1, -1).gather(1, idx[..., None].expand(-1, -1, cos.shape[-1]))
    sin = sin.expand(b, -1, -1).gather(1, idx[..., None].expand(-1, -1, sin.shape[-1]))
    pos = pos.gather(1, idx)
    for block in lm.layers[layer:]:
        h = block(h, attention_mask=None, position_ids=pos, position_embeddings=(cos, sin))
    return vlm.model.lm_head(lm.norm(h[:, -1:]))[:, 0].float()


def timed_anchor(vlm, batch, embeds, keep):
    device = vlm.device
    events = [torch.cuda.Event(enable_timing=True) for _ in range(2)] if device.type == "cuda" else None
    sync(device)
    t0 = time.perf_counter()
    if events:
        events[0].record()
    logits = anchor_fastv(vlm, batch, embeds, keep)
    if events:
        events[1].record()
    sync(device)
    wall = time.perf_counter() - t0
    gpu = events[0].elapsed_time(events[1]) / 1000 if events else wall
    return {"wall": wall, "gpu": gpu, "flops": float("nan"), "decode": float("nan"), "logits": logits.cpu()}


def latency_table(vlm, shape, n_batch, args):
    size = SHAPES[shape][1]
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(n_batch)]
    batch = vlm.prepare(images, [QUESTION] * n_batch)
    n_image = batch.layouts[0].n_image_tokens
    # by default every method that runs on a processed batch alone (downsample changes the image;
    # cdpruner needs a CLIP text tower passed in)
    default = [m for m in prune.methods() if prune.get(m).where != "image" and prune.get(m).resolve_knobs is None]
    methods = [m for m in (args.methods.split(",") if args.methods else default) if m != "none"]
    configs = [("none", 1.0)] + [(m, k) for m in methods for k in args.keeps] + [("anchor-fastv", k) for k in args.keeps]
    embeds = vlm.language_model_inputs(batch)[0]  # captured once, outside any timing

    def once(method, keep):
        if method == "anchor-fastv":
            return timed_anchor(vlm, batch, embeds, prune.keep_count(keep, n_image))
        return timed_run(vlm, batch, method, keep, args.new_tokens)

    for keep in args.keeps:  # the anchor must be FastV: same logits
        want = once("fastv", keep)["logits"]
        got = once("anchor-fastv", keep)["logits"]
        diff = (got - want).abs().max().item()
        scale = want.abs().max().item()
        print(f"  anchor check keep {keep}: max |logit diff| {diff:.3g} (logit scale {scale:.3g})")
        if args.small and diff > 1e-4:  # float32: the anchor and the engine must compute the same FastV
            sys.exit(f"the hand-written FastV differs from prune.run's fastv by {diff:.3g}")
    samples = {c: [] for c in configs}
    for c in configs:
        once(*c)  # warm-up
    for _ in range(args.repeats):
        for c in configs:
            samples[c].append(once(*c))
    med = {c: {f: statistics.median(r[f] for r in rs) for f in ("wall", "gpu", "flops", "decode")}
           for c, rs in samples.items()}
    base = med[("none", 1.0)]
    print(f"\n{shape}, batch {n_batch}: sequence {batch.model_inputs['input_ids'].shape[1]} tokens, "
          f"{n_image} image tokens, {vlm.num_layers} layers, median of {args.repeats}")
    print(f"{'method':<24}{'keep':>6}{'wall ms':>10}{'ratio':>7}{'gpu ms':>10}{'ratio':>7}{'FLOPs':>7}"
          f"{'decode ms':>11}{'ratio':>7}")
    for (method, keep), m in med.items():
        print(f"{method:<24}{keep:>6}{m['wall'] * 1e3:>10.2f}{m['wall'] / base['wall']:>7.2f}{m['gpu'] * 1e3:>10.2f}"
              f"{m['gpu'] / base['gpu']:>7.2f}{m['flops']:>7.2f}{m['decode'] * 1e3:>11.2f}"
              f"{m['decode'] / base['decode']:>7.2f}")


def collector_table(vlm, shape, n_batch, args):
    size = SHAPES[shape][1]
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(n_batch)]
    batch = vlm.prepare(images, [QUESTION] * n_batch)
    inputs = batch.model_inputs
    device = vlm.device

    def run(mode):
        if mode == "collector":
            vta.record_attention(vlm, batch)
            return
        vlm.model.set_attn_implementation("eager" if mode == "eager" else "sdpa")
        try:
            with torch.inference_mode():
                vlm.model(**inputs, use_cache=False, logits_to_keep=1, output_attentions=mode == "eager")
        finally:
            vlm.model.set_attn_implementation("sdpa")

    modes = ["sdpa", "collector", "eager"]
    peak, times = {}, {m: [] for m in modes}
    for mode in modes:
        try:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            run(mode)
            peak[mode] = torch.cuda.max_memory_allocated(device) - before if device.type == "cuda" else float("nan")
        except torch.OutOfMemoryError:
            peak[mode] = None
    for _ in range(args.repeats):
        for mode in modes:
            if peak[mode] is None:
                continue
            sync(device)
            t0 = time.perf_counter()
            run(mode)
            sync(device)
            times[mode].append(time.perf_counter() - t0)
    print(f"\ncollector, {shape}, batch {n_batch}: {batch.layouts[0].n_image_tokens} image tokens, "
          f"median of {args.repeats}")
    print(f"{'mode':<12}{'ms':>10}{'ratio':>7}{'peak MiB':>11}{'ratio':>7}")
    t_base, p_base = statistics.median(times["sdpa"]), peak["sdpa"]
    for mode in modes:
        if peak[mode] is None:
            print(f"{mode:<12}{'out of memory':>35}")
            continue
        t = statistics.median(times[mode])
        print(f"{mode:<12}{t * 1e3:>10.2f}{t / t_base:>7.2f}{peak[mode] / 2**20:>11.1f}{peak[mode] / p_base:>7.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--realproc", default=str(Path(__file__).resolve().parents[2] / "shared" / "realproc"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny widths (a smoke run of the script)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--keeps", type=lambda s: [float(x) for x in s.split(",")], default=[0.5, 0.25, 0.1])
    parser.add_argument("--methods", default="", help="comma-separated (default: every registered method)")
    parser.add_argument("--shapes", default="llava-1.5:1,16;llava-next:1", help="shape:batch sizes;...")
    parser.add_argument("--collector", default="llava-1.5:1,8;llava-next:1,8", help="shape:batch sizes;... ('' skips)")
    args = parser.parse_args()
    args.device = torch.device(args.device)
    name = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; vtanalysis {vta.__version__}; "
          f"{'tiny widths' if args.small else 'full-size bfloat16'}")
    plans = {}
    for spec, table in ((args.shapes, latency_table), (args.collector, collector_table)):
        for part in filter(None, spec.split(";")):
            shape, sizes = part.split(":")
            plans.setdefault(shape, []).extend((table, int(b)) for b in sizes.split(","))
    for shape, tables in plans.items():
        vlm = build(Path(args.realproc) / SHAPES[shape][0], args)
        for table, n_batch in tables:
            table(vlm, shape, n_batch, args)
        del vlm
        if args.device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
