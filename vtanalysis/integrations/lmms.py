"""An lmms-eval model that runs any registered pruning method on any supported family.

    lmms-eval --model vtanalysis \
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,method=adaptprune,keep=0.1 --tasks pope

lmms-eval finds it through the `lmms_eval.models` entry point of this package (`manifest`).
Model arguments: `pretrained` (a hub id, a local path or "demo"), `method` (default "none": the
unpruned model), `keep` (ratio or count), `device`, `dtype`, `batch_size`, `records` (the JSONL file
of per-sample kept-token counts, FLOPs ratios and prefill times; "" for none); any other argument
is a knob of the method (`vtanalysis methods` lists them), e.g. `layer=3`.

`generate_until` is greedy through `prune.run` (lmms-eval's `temperature` / `do_sample` are
refused when they ask for sampling); `loglikelihood` scores the continuation by teacher
forcing through `prune.run(forced_ids=)`: the selection is made on the prompt alone, as when the
model answers. "downsample" (which changes the image itself) runs the unpruned model on the
downsampled images, as `vtanalysis eval` does; its FLOPs ratio is against the full-size images.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from .. import prune
from ..errors import VTAError
from ..models.loading import load_vlm

ARGS = ("pretrained", "method", "keep", "device", "dtype", "batch_size", "records", "max_new_tokens")


def manifest():
    """The `lmms_eval.models` entry point: the model id "vtanalysis" and its class."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="vtanalysis", simple_class_path=f"{__name__}.VTAnalysis")


def _keep(value) -> float | int:
    keep = float(value)
    return int(keep) if keep > 1 and keep == int(keep) else keep


class VTAnalysis(lmms):
    """lmms-eval's `lmms` over a `VLM` and a pruning method (module docstring: the arguments)."""

    is_simple = True

    def __init__(self, pretrained: str = "demo", method: str = "none", keep: float | int = 1.0, device: str | None = None,
                 dtype: str | None = None, batch_size: int | str = 1, records: str = "vtanalysis_records.jsonl",
                 max_new_tokens: int = 16, **knobs) -> None:
        super().__init__()
        from accelerate import PartialState

        state = PartialState()  # one process, or one of `accelerate launch`'s: lmms-eval shards by rank
        self._rank, self._world_size = state.process_index, state.num_processes
        self.spec = prune.get(method)  # an unknown method: VTAError naming the registered ones
        self.method, self.keep = method, _keep(keep)
        unknown = sorted(set(knobs) - set(self.spec.knobs))
        if unknown:
            raise VTAError(f"--model_args {', '.join(unknown)}: not an argument of the vtanalysis model ({', '.join(ARGS)}) "
                           f"nor a knob of '{method}' ({', '.join(sorted(self.spec.knobs)) or 'it has none'}).")
        self.knobs = knobs
        self.batch_size_per_gpu = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        if device is None:
            device = str(state.device) if state.num_processes > 1 else ("cuda" if torch.cuda.is_available() else "cpu")
        self.vlm = load_vlm(pretrained, device=device, dtype=dtype)
        self.records = Path(records) if records else None
        if self.records is not None and self._rank > 0:
            self.records = self.records.with_name(f"{self.records.stem}.rank{self._rank}{self.records.suffix}")
        if self.records is not None:
            self.records.write_text("")

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    # -- requests ----------------------------------------------------------------------------------
    def _doc(self, task, split, doc_id):
        return self.task_dict[task][split][doc_id]

    def _visuals(self, doc_to_visual, doc) -> list:
        visuals = doc_to_visual(doc) if doc_to_visual is not None else []
        visuals = [v for v in (visuals if isinstance(visuals, (list, tuple)) else [visuals]) if v is not None]
        if not visuals:
            raise VTAError("the vtanalysis model prunes image tokens and this request has no image; "
                           "run text-only tasks on the model without vtanalysis.")
        if any(isinstance(v, str) for v in visuals):
            raise VTAError("this request carries a video (a path); the vtanalysis model takes images only.")
        return visuals

    def _question(self, context: str) -> str:
        # lmms-eval contexts rarely hold image placeholders; the chat template adds them per image
        return context.replace(self.vlm.processor.image_token if hasattr(self.vlm.processor, "image_token")
                               else "<image>", "").strip()

    def _run(self, images: list[list], questions: list[str], **kw):
        """(`prune.run` result, the batch it ran on, per-sample unpruned FLOPs of the full-size images)."""
        from ..prune.flops import unpruned_prefill_flops

        batch = self.vlm.prepare(images, questions)
        if self.spec.where != "image":
            res = prune.run(self.vlm, batch, self.method, self.keep, **self.knobs, **kw)
            return res, batch, res.flops_unpruned
        full = unpruned_prefill_flops(self.vlm, batch)
        small = [prune.downsampled(self.vlm, ims, self.keep) for ims in images]
        batch = self.vlm.prepare(small, questions)
        return prune.run(self.vlm, batch, "none", **kw), batch, full

    def _log(self, rows: list[dict]) -> None:
        if self.records is not None:
            with self.records.open("a") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy answers, `batch_size` requests at a time (grouped by their generation arguments)."""
        from tqdm.auto import tqdm

        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(json.dumps(r.args[1], sort_keys=True, default=str), []).append(i)
        bar = tqdm(total=len(requests), desc=f"vtanalysis {self.method} keep {self.keep:g}", disable=self.rank != 0)
        for key, idx in groups.items():
            gen = json.loads(key)
            if gen.get("do_sample") or float(gen.get("temperature", 0) or 0) > 0:
                raise VTAError(f"the task asks for sampling ({gen}); the vtanalysis model decodes greedily "
                               "(set temperature: 0 in the task's generation_kwargs).")
            until = gen.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            new_tokens = int(gen.get("max_new_tokens", self.max_new_tokens))
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                args = [requests[i].args for i in chunk]
                docs = [self._doc(a[4], a[5], a[3]) for a in args]
                images = [self._visuals(a[2], d) for a, d in zip(args, docs)]
                res, batch, full = self._run(images, [self._question(a[0]) for a in args], max_new_tokens=new_tokens)
                for i, answer in zip(chunk, res.answers):
                    for stop in until:
                        answer = answer.split(stop)[0] if stop else answer
                    out[i] = answer.strip()
                self._log([{"task": a[4], "doc_id": a[3], "method": self.method, "keep": self.keep,
                            "image_tokens": lay.n_image_tokens,
                            "kept_per_stage": [st[b] for st in res.kept_counts] if res.kept_counts else [],
                            "flops": res.flops[b], "flops_unpruned": full[b], "flops_ratio": res.flops[b] / full[b],
                            "batch_prefill_s": res.prefill_s, "batch": len(chunk)}
                           for b, (a, lay) in enumerate(zip(args, batch.layouts))])
                bar.update(len(chunk))
        bar.close()
        return out

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """(log p(continuation | image, context), whether greedy decoding gives the continuation) under
        the method's pruning, one request at a time."""
        results = []
        tok = self.vlm.processor.tokenizer
        for context, target, doc_to_visual, doc_id, task, split in [r.args for r in requests]:
            doc = self._doc(task, split, doc_id)
            continuation = target if isinstance(target, str) else target(doc)
            images, question = [self._visuals(doc_to_visual, doc)], self._question(context)
            # the continuation's tokens: those the prompt + continuation has beyond the prompt's
            prompt = self.vlm.adapter.build_prompt(self.vlm.processor, question, len(images[0]))
            whole = tok(prompt + continuation, add_special_tokens=False)["input_ids"]
            n = len(whole) - len(tok(prompt, add_special_tokens=False)["input_ids"])
            if n < 1:
                raise VTAError(f"the continuation {continuation!r} adds no token to the prompt.")
            cont = torch.tensor([whole[-n:]])
            res = self._run(images, [question], forced_ids=cont)[0]
            logp = torch.log_softmax(res.step_logits[0], dim=-1)  # [n, vocab], on the host
            results.append((float(logp.gather(-1, cont[0][:, None]).sum()), bool((logp.argmax(-1) == cont[0]).all())))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise VTAError("multi-round generation is not supported by the vtanalysis model; use single-round tasks.")
