"""`run` and `select`: pruning inside real inference, with the answer, the kept tokens, FLOPs and timings."""
from __future__ import annotations

import functools
import time
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
import transformers

from ..errors import MethodError, VTAError
from ..rules.budget import crop_budgets
from .._core.scoped import scoped
from .budget import average_tokens, keeps_everything
from ..models.tower_reuse import shareable, shared_tower
from .engine import Pruner, Selected, Stage, check_window
from .flops import prefill_flops, unpruned_prefill_flops
from .registry import get
from .vision import VisionCapture, crop_columns, full_crop_tokens, require_cls


@dataclass
class RunResult:
    """What one pruned (or `none`) inference produced.

    Attributes:
        answers: one decoded string per sample.
        token_ids: LongTensor [B, new tokens] generated ids.
        logits: [B, vocab] logits of the first answer token (prefill, last position).
        stage_layers: first decoder layer of each stage.
        kept: per stage, per sample: LongTensor of kept layout columns (image-token columns).
        kept_grid: per stage, per sample: list of (grid index, row, col) of kept grid tokens.
        flops, flops_unpruned: per-sample prefill FLOPs (formula in `prune.flops`), and their ratio.
        image_tokens_per_layer: per sample, the image tokens the decoder layers saw, averaged over
            the layers (what `keep` sets for multi-stage methods; AdaptInfer's authors count each
            stage from its pruning layer, one layer earlier: `adaptinfer.authors_average`).
        prefill_s, decode_s: time of the language model's prefill call and of all decoding steps
            (CUDA: between CUDA events around each call; CPU: wall time).
        kv_cache_bytes: size of the KV cache at the end of generation (0 with use_cache=False).
        step_logits: with `run(forced_ids=)`, FloatTensor [B, T, vocab]: the raw logits of every forced
            step (log_softmax of step t scores forced token t: a continuation's log-likelihood).
    """

    method: str
    answers: list[str]
    token_ids: torch.Tensor
    logits: torch.Tensor
    stage_layers: list[int]
    kept: list[list[torch.Tensor]]
    kept_grid: list[list[list[tuple[int, int, int]]]]
    flops: list[int]
    flops_unpruned: list[int]
    prefill_s: float
    decode_s: float
    kept_counts: list[list[int]] = field(default_factory=list)
    kv_cache_bytes: int = 0
    image_tokens_per_layer: list[float] = field(default_factory=list)
    step_logits: torch.Tensor | None = None

    @property
    def flops_ratio(self) -> float:
        return sum(self.flops) / sum(self.flops_unpruned)


def _stages(vlm, batch, method, keep, knobs, crops=None) -> list[Stage]:
    """The method's stages; each sample's budget is planned on its own image-token count (pre-LLM
    methods: on each of its crops, `_crop_budgets`)."""
    counts = {lay.n_image_tokens for lay in batch.layouts}
    if all(keeps_everything(keep, n) for n in counts):  # keep = 1.0 is the unpruned model, for every method
        return []
    if method.where == "pre":
        per_crop = [_crop_budgets(vlm, method, keep, knobs, sample) for sample in crops]
        totals = [sum(c) + len(lay.newline_columns) for c, lay in zip(per_crop, batch.layouts)]
        return [Stage(0, lambda b: totals[b], per_crop=per_crop)]
    # a negative layer counts from the end (layer=-1: the last), as in record_attention
    plans = {n: [(vlm.check_layer(layer, "pruning layer"), k) for layer, k in method.plan(vlm, n, keep, **knobs)]
             for n in counts}
    layers = [layer for layer, _ in plans[min(counts)]]
    if any([layer for layer, _ in p] != layers for p in plans.values()):
        raise VTAError(f"method '{method.name}' planned different layers for different image sizes.")
    n_of = [lay.n_image_tokens for lay in batch.layouts]
    return [Stage(layer, lambda b, i=i: plans[n_of[b]][i][1]) for i, layer in enumerate(layers)]


def _crop_budgets(vlm, method, keep, knobs, crops) -> list[int]:
    """Tokens a pre-LLM method keeps of each crop, by `rules.budget.crop_budgets` with the method's plan."""
    return crop_budgets(keep, full_crop_tokens(vlm, crops), [len(cols) for cols in crops],
                        lambda k, n: method.plan(vlm, n, k, **knobs)[0][1])


def _grid_coords(layout, columns: torch.Tensor) -> list[tuple[int, int, int]]:
    out = []
    for c in columns.tolist():  # ok-host: once per stage and sample, after generation, for the result
        for gi, g in enumerate(layout.grids):
            if g.start <= c < g.stop:
                out.append((gi, *divmod(c - g.start, g.shape[1])))
                break
    return out


class _Timer:
    """Time of each language-model call (the first is the prefill).

    On CUDA, elapsed time between CUDA events recorded when each call starts and ends (launch
    gaps included, no host synchronisation during generation; read once at the end); elsewhere,
    and for a model whose layers sit on several GPUs (one device's events do not wait for the
    others' work), wall time after synchronising every device the layers use.
    """

    def __init__(self, module, devices: set):
        self.cuda = {d.type for d in devices} == {"cuda"} and len(devices) == 1
        self.sync = [d for d in devices if d.type == "cuda"] if not self.cuda else []
        self.marks = []
        self._stack = ExitStack()  # scoped to this thread's run (`vtanalysis._core.scoped`)
        self._stack.enter_context(scoped(module, "pre", lambda *_: self.marks.append([self._now(), None])))
        self._stack.enter_context(scoped(module, "post", lambda *_: self.marks[-1].__setitem__(1, self._now())))

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        for device in self.sync:  # ok-host: once per language-model call, only when layers span GPUs
            torch.cuda.synchronize(device)
        return time.perf_counter()

    @property
    def times(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1000 for a, b in self.marks if b is not None]
        return [b - a for a, b in self.marks if b is not None]

    def remove(self):
        self._stack.close()


def run(vlm, batch, method: str = "fastv", keep: float | int = 0.25, *, max_new_tokens: int = 8,
        use_cache: bool = True, positions: str | None = None, forced_ids: torch.Tensor | None = None,
        **knobs) -> RunResult:
    """Generate answers with `method` pruning the image tokens inside the model.

    Args:
        vlm, batch: a `VLM` and its `VLMInputs` (any batch size; left padding).
        method: a registered name (`prune.methods()`); "none" runs the unpruned model on the same path.
        keep: a ratio in (0, 1] or a token count (of each sample's image tokens).
        max_new_tokens: greedy decoding length.
        use_cache: decode with the KV cache (pruned layers cache only kept tokens).
        positions: "original" or "renumber" (default: the method's own convention; pre-LLM methods
            renumber, i.e. the LLM sees the shortened sequence). On M-RoPE models (Qwen2-VL) kept
            tokens keep their grid positions by default, also for in-LLM methods that renumber
            elsewhere (AdaptInfer, PyramidDrop, SparseVLM); asking for "renumber" there is an error.
        forced_ids: LongTensor [B, T]: decode exactly these tokens (teacher forcing through the same
            pruned prefill and KV cache as generation; `max_new_tokens` becomes T) and return every
            step's logits in `step_logits`: the pruned model's likelihood of a given continuation,
            with the selection made on the prompt alone, as when it answers.
        **knobs: method options (`prune.get(method).knobs`; `vtanalysis methods` lists them), e.g.
            layer=3 (FastV/AdaptPrune), layers=/counts= (AdaptInfer), seed=1 (random); an option the
            method does not have is an error.
    """
    max_new_tokens = decoding_length(vlm, batch, max_new_tokens, forced_ids)
    spec, pruner, contexts = _set_up(vlm, batch, method, keep, positions, knobs)
    return generate(vlm, batch, pruner, name=method, max_new_tokens=max_new_tokens, use_cache=use_cache,
                    forced_ids=forced_ids, contexts=contexts, ordered=spec.ordered, share_tower=shareable(spec))


def _set_up(vlm, batch, method: str, keep, positions: str | None, knobs: dict, select_only: bool = False):
    """(the method's spec, its `Pruner` for this batch, the contexts `generate` enters before it)."""
    spec = get(method)
    if spec.where == "image" and not keeps_everything(keep, min(lay.n_image_tokens for lay in batch.layouts)):
        raise VTAError(f"'{method}' changes the image before the processor, and this batch is already processed: "
                       f"prepare the batch from prune.downsampled(vlm, images, keep) and run 'none' on it "
                       f"(`vtanalysis.evaluate` and `vtanalysis eval --method {method}` do this).")
    if "cls" in spec.needs:
        require_cls(vlm, method, spec.needs)
    knobs, choose_knobs = spec.split_knobs(knobs)
    crops = crop_columns(vlm, batch) if spec.where == "pre" else None  # host-side, before the forward pass
    stages = _stages(vlm, batch, spec, keep, knobs, crops)
    if spec.resolve_knobs is not None and stages:  # keep-all runs no chooser: nothing to resolve
        choose_knobs = spec.resolve_knobs(vlm, choose_knobs)
    choose = _checked(spec.name, functools.partial(spec.choose, **choose_knobs) if choose_knobs else spec.choose)
    if vlm.adapter.mrope and (spec.where == "pre" or positions is None):
        positions = "original"  # M-RoPE ids encode the image grid: renumbering them is not defined
    positions = positions or spec.positions
    capture = VisionCapture(vlm) if "cls" in spec.needs else None
    pruner = Pruner(vlm, batch, stages, choose, positions=positions, needs=spec.needs, vision=capture,
                    pre=spec.where == "pre", ordered=spec.ordered, crops=crops, select_only=select_only)

    def contexts():  # built inside inference mode, entered before the pruner
        merge = spec.prepare(vlm, batch, stages[0], capture, crops) if spec.prepare and stages else None
        return [capture, merge]
    return spec, pruner, contexts


def decoding_length(vlm, batch, max_new_tokens: int, forced_ids: torch.Tensor | None) -> int:
    """The tokens to decode: `forced_ids`' length when given (checked to be [B, T >= 1]), else
    `max_new_tokens` (checked >= 1); the prompt plus them must fit a sliding window (`check_window`)."""
    if forced_ids is not None:
        if forced_ids.dim() != 2 or forced_ids.shape[0] != len(batch) or forced_ids.shape[1] < 1:
            raise VTAError(f"forced_ids must be a LongTensor [batch {len(batch)}, tokens >= 1], got shape "
                           f"{tuple(forced_ids.shape)}.")
        max_new_tokens = forced_ids.shape[1]
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise VTAError(f"max_new_tokens must be an integer >= 1 (the prefill predicts the first token), "
                       f"got {max_new_tokens!r}.")
    check_window(vlm, batch.model_inputs["input_ids"].shape[1] + max_new_tokens)
    return max_new_tokens


def generate(vlm, batch, pruner: Pruner, *, name: str, max_new_tokens: int, use_cache: bool = True,
             forced_ids: torch.Tensor | None = None, contexts=lambda: [], ordered: bool = False,
             share_tower: bool = False) -> RunResult:
    """Greedy generation of `batch` with `pruner` applying its stages (see `run`; `vtanalysis.causal`
    builds its own stages and calls this too). `contexts()` returns context managers (or None) entered,
    inside inference mode, before the pruner: a vision capture, a method's merge, an input edit.
    `share_tower`: nothing here reads inside the vision tower, so within `tower_reuse.sharing(vlm)`
    its output for the same inputs is reused."""
    out, times = _generate(vlm, batch, pruner, max_new_tokens=max_new_tokens, use_cache=use_cache,
                           forced_ids=forced_ids, contexts=contexts, share_tower=share_tower)
    inputs = batch.model_inputs
    new = out.sequences[:, inputs["input_ids"].shape[1]:]
    result = _result(vlm, batch, name, pruner.stages, new, out.logits[0], times, repeats=ordered)
    # transformers >= 5.25 names the output's cache `cache` (`past_key_values` warns there)
    field = "cache" if "cache" in getattr(type(out), "__dataclass_fields__", {}) else "past_key_values"
    result.kv_cache_bytes = _cache_bytes(out.get(field))
    if forced_ids is not None:
        result.step_logits = torch.stack(out.logits, 1).float().cpu()  # ok-host: the result, once, after generation
    return result


def _generate(vlm, batch, pruner: Pruner, *, max_new_tokens: int, use_cache: bool = True,
              forced_ids: torch.Tensor | None = None, contexts=lambda: [], share_tower: bool = False):
    """(`model.generate`'s output, or None where a select-only pruner stopped the prefill; the language
    model's call times). The pruner's stages hold its selection afterwards."""
    inputs = batch.to(vlm.device).model_inputs
    tok = vlm.processor.tokenizer
    timer = _Timer(pruner.lm, set(pruner.layer_device))
    out, entered = None, []
    try:
        with ExitStack() as stack, torch.inference_mode():
            if share_tower:
                stack.enter_context(shared_tower(vlm))
            entered = [ctx for ctx in contexts() if ctx is not None]
            for ctx in (*entered, pruner):
                stack.enter_context(ctx)
            try:
                # an answer never contains image placeholders (random test models could emit one)
                out = vlm.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, use_cache=use_cache,
                                         return_dict_in_generate=True, output_logits=True,
                                         suppress_tokens=[vlm.adapter.image_token_id(vlm.config)],
                                         logits_processor=None if forced_ids is None else
                                         [_Force(forced_ids.to(vlm.device), inputs["input_ids"].shape[1])],
                                         pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
            except Selected:
                if not pruner.select_only:
                    raise
    finally:
        timer.remove()
    for ctx in entered:  # VisionZip's [CLS] rode in these columns' slots: they are not kept patches
        for st in pruner.stages:
            for b, extra in enumerate(getattr(ctx, "stand_ins", None) or []):
                if extra:
                    st.columns[b] = st.columns[b][~torch.isin(st.columns[b], torch.cat(extra))]
    return out, timer.times


class _Force(transformers.LogitsProcessor):
    """A logits processor that leaves only forced token t possible at step t (scores, not the raw
    logits `output_logits` returns, so the likelihoods are the model's own)."""

    def __init__(self, ids: torch.Tensor, prompt_len: int):
        self.ids, self.prompt_len = ids, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1] - self.prompt_len  # host ints: shapes, not device values
        forced = torch.full_like(scores, float("-inf"))
        return forced.scatter_(1, self.ids[:, t:t + 1], 0.0)


def _cache_bytes(cache) -> int:
    if cache is None:
        return 0
    tensors = [t for layer in getattr(cache, "layers", []) for t in (getattr(layer, "keys", None),
                                                                      getattr(layer, "values", None))]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _kept(method, stages, repeats=False) -> list[Stage]:
    """The stages with their kept columns on the CPU, checked for repeats (unless the method's order
    and repeats count: `ordered`)."""
    for st in stages if not repeats else []:  # checked once here, not mid-prefill: a duplicate would be a silent filler
        for cols in st.columns:
            if cols.unique().numel() != cols.numel():
                raise MethodError(f"method '{method}' selected a token twice at layer {st.layer}; a chooser must "
                                  "return distinct indices.")
    return [_on_host(st) for st in stages]


def _result(vlm, batch, method, stages, new_ids, logits, times, repeats=False) -> RunResult:
    stages = _kept(method, stages, repeats)
    cfg = vlm.config.text_config
    d, m, depth = cfg.hidden_size, cfg.intermediate_size, vlm.num_layers
    flops, full = [], unpruned_prefill_flops(vlm, batch)
    lengths = batch.model_inputs["attention_mask"].sum(1).tolist()  # ok-host: once, after generation
    for b, lay in enumerate(batch.layouts):
        real = int(lengths[b])
        per_layer, n = [], real
        for l in range(depth):
            for st in stages:
                if st.layer == l:
                    n = real - lay.n_image_tokens + st.kept_counts[b]
            per_layer.append(n)
        flops.append(prefill_flops(per_layer, d, m))
    with vlm.tokenizer_lock:  # fast tokenizers are not thread-safe (see VLM.tokenizer_lock)
        answers = vlm.processor.tokenizer.batch_decode(new_ids, skip_special_tokens=True)
    return RunResult(
        method=method, answers=[a.strip() for a in answers],
        token_ids=new_ids.cpu(), logits=logits.float().cpu(),  # ok-host: the result, once, after generation
        stage_layers=[st.layer for st in stages], kept=[st.columns for st in stages],
        kept_grid=[[_grid_coords(lay, cols) for lay, cols in zip(batch.layouts, st.columns)] for st in stages],
        flops=flops, flops_unpruned=full, prefill_s=times[0] if times else 0.0, decode_s=sum(times[1:]),
        kept_counts=[st.kept_counts for st in stages],
        image_tokens_per_layer=[average_tokens(lay.n_image_tokens, [(st.layer, st.kept_counts[b]) for st in stages],
                                               depth) for b, lay in enumerate(batch.layouts)])


def _checked(name: str, choose):
    """`choose` with its contract checked on what the host knows without a device round trip: an
    integer tensor of shape [keep]. (Distinct indices are checked once, after generation.)"""
    def checked(inputs, keep, stage):
        chosen = choose(inputs, keep, stage)
        if not isinstance(chosen, torch.Tensor) or chosen.dtype not in (torch.long, torch.int):
            raise MethodError(f"method '{name}': its chooser must return a LongTensor of indices into the current image "
                              f"tokens, got {type(chosen).__name__}"
                              f"{' of ' + str(chosen.dtype) if isinstance(chosen, torch.Tensor) else ''}.")
        if tuple(chosen.shape) != (keep,):
            raise MethodError(f"method '{name}': its chooser returned shape {tuple(chosen.shape)} for keep={keep} at "
                              f"stage {stage}; it must return exactly [keep] indices.")
        return chosen
    return checked


def _on_host(stage: Stage) -> Stage:
    """The stage with its kept columns on the CPU (the one transfer of a run, at the end)."""
    stage.columns = [c.cpu() for c in stage.columns]  # ok-host: after generation, for the result
    return stage


def select(vlm, batch, method: str = "fastv", keep: float | int = 0.25, **knobs) -> list[list[torch.Tensor]]:
    """Just the selection: per stage, per sample, the kept layout columns (one prefill pass, up to the
    last stage's layer: the layers after it cannot change what was chosen).

    Arguments as `run`: `select(vlm, batch, "fastv", keep=0.25)`. The order of earlier releases,
    `select("fastv", vlm, batch, keep)`, still works with a DeprecationWarning."""
    if isinstance(vlm, str):  # select(name, vlm, batch, keep=...): the old order
        warnings.warn("prune.select(name, vlm, batch, ...) is deprecated; call prune.select(vlm, batch, name, keep) "
                      "like prune.run.", DeprecationWarning, stacklevel=2)
        vlm, batch, method = batch, method, vlm
    check_window(vlm, batch.model_inputs["input_ids"].shape[1] + 1)
    spec, pruner, contexts = _set_up(vlm, batch, method, keep, None, knobs, select_only=True)
    # the prefill stops once the last stage has chosen: later layers cannot change the selection
    _generate(vlm, batch, pruner, max_new_tokens=1, contexts=contexts, share_tower=shareable(spec))
    return [st.columns for st in _kept(method, pruner.stages, spec.ordered)]
