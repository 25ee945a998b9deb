"""Replay the decoder layers from layer l for many ablated copies of one sample at once.

`importance` and `oracle` measure the effect of many candidate ablations of the same sample. Each
candidate differs from the unablated pass only from layer l on (its tokens' keys are masked there)
or only in the input embeddings (layer 0, "zero"/"mean"), so one unablated teacher-forced pass is
recorded (`record`), and each candidate replays layers l .. L-1 on a copy of the recorded states
entering layer l, with the arguments the model gave those layers (attention mask, rotary tables)
and its own mask edit (`edges.without`). Layers < l run once per sample, not once per candidate.

The recorded pass is the last step of a teacher-forced, cache-less generation of the explained
answer: the prompt followed by the answer's tokens but its last, in one forward, so the logits at
prompt positions P-1 .. P+T-2 score answer tokens 0 .. T-1 (exactly what decoding with the KV
cache scores). Whatever the language model adds between two layers (Qwen3-VL's DeepStack features
at the image positions) is recorded as the difference between one layer's output and the next
one's input, and added back in the replay: it does not depend on the ablation.
"""
from __future__ import annotations

from contextlib import ExitStack
import inspect
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from .._core.scoped import scoped
from ..prune.engine import Pruner
from ..prune.run import decoding_length, generate
from .edges import without


@dataclass
class Recorded:
    """One sample's unablated teacher-forced pass, from decoder layer `layer` on.

    Attributes:
        layer: the first recorded layer.
        inputs: per recorded layer, [1, Q, D] the states entering it (Q = prompt length + answer
            length - 1); a replay may start at any of them.
        kwargs: per replayed layer, the keyword arguments the model passed it (this sample's rows).
        added: per replayed layer, [1, Q, D] what the model adds after it before the next layer, or None.
        prompt_len: P, the (padded) prompt length: logits at P-1+t score answer token t.
        image_positions: [n] sequence positions of the sample's image tokens (column order).
        other_positions: [Q - n] every other position (text, padding, answer), ascending.
        kv: per layer, ([1, heads, Q, d] keys, values) of the recorded pass, computed when a
            replay with a prefix first needs them (`layer_kv`).
    """
    layer: int
    inputs: list[torch.Tensor]
    kwargs: list[dict]
    added: list[torch.Tensor | None]
    prompt_len: int
    image_positions: torch.Tensor
    other_positions: torch.Tensor
    kv: dict = field(default_factory=dict)


def each_sample(batch, progress: bool, desc: str):
    """range(len(batch)), behind a progress bar when asked."""
    samples = range(len(batch))
    if progress:
        from tqdm.auto import tqdm
        samples = tqdm(samples, desc=desc, unit="sample")
    return samples


def _row(value, b: int, batch_size: int):
    """Sample b's part of a layer argument (batch dimension first; broadcast tensors as they are)."""
    if torch.is_tensor(value):
        return value[b:b + 1] if value.dim() and value.shape[0] == batch_size and batch_size > 1 else value
    if isinstance(value, (tuple, list)):
        return type(value)(_row(v, b, batch_size) for v in value)
    if isinstance(value, dict):
        return {k: _row(v, b, batch_size) for k, v in value.items()}
    return value


def record(vlm, batch, ref, layer: int) -> list[Recorded]:
    """Per sample, the unablated teacher-forced pass of `ref`'s answer from decoder `layer` on."""
    layers = vlm.decoder_layers
    seen_in, seen_kwargs, seen_out = {}, {}, {}

    def before(l):
        def hook(module, args, kwargs):
            seen_in[l] = args[0] if args else kwargs["hidden_states"]
            seen_kwargs[l] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        return hook

    def after(l):
        def around(forward, *args, **kwargs):
            out = forward(*args, **kwargs)
            seen_out[l] = out
            return out
        return around

    class Recording:
        def __enter__(self):
            self.stack = ExitStack()
            for l in range(layer, len(layers)):
                self.stack.enter_context(scoped(layers[l], "pre", before(l)))
                self.stack.enter_context(scoped(layers[l], "around", after(l)))
            return self

        def __exit__(self, *exc):
            self.stack.close()
            return False

    # a cache-less step re-runs the whole sequence: the last one is prompt + answer[:-1] in one pass
    generate(vlm, batch, Pruner(vlm, batch, [], None), name="record", forced_ids=ref.ids, use_cache=False,
             contexts=lambda: [Recording()], max_new_tokens=decoding_length(vlm, batch, 8, ref.ids), share_tower=True)
    size, prompt_len = len(batch), batch.model_inputs["input_ids"].shape[1]
    out = []
    for b, lay in enumerate(batch.layouts):
        added = []
        for l in range(layer, len(layers)):
            nxt = seen_in.get(l + 1)
            delta = None if nxt is None or nxt is seen_out[l] else (nxt[b:b + 1] - seen_out[l][b:b + 1])
            added.append(delta if delta is not None and delta.any() else None)
        length = seen_in[layer].shape[1]
        other = torch.ones(length, dtype=torch.bool)
        other[lay.image_positions] = False
        out.append(Recorded(layer, [seen_in[l][b:b + 1] for l in range(layer, len(layers))],
                            [_row(seen_kwargs[l], b, size) for l in range(layer, len(layers))], added, prompt_len,
                            lay.image_positions.to(vlm.device), torch.arange(length)[other].to(vlm.device)))
    return out


def _cache_argument(layer, kwargs: dict) -> str:
    """The decoder layer's keyword for the KV cache: the one the model passed it (transformers >= 5.25:
    `cache`, before: `past_key_values`), else the one its signature names."""
    for name in ("cache", "past_key_values"):
        if name in kwargs:
            return name
    return "cache" if "cache" in inspect.signature(type(layer).forward).parameters else "past_key_values"


def layer_kv(vlm, rec: Recorded, l: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer l's keys and values over the recorded sequence (the layer run once on its recorded
    input with a fresh cache): position i's key depends on position i's state alone, so any prefix
    of them is the prefix's."""
    if l not in rec.kv:
        layer, cache = vlm.decoder_layers[l], DynamicCache()
        kwargs = rec.kwargs[l - rec.layer]
        layer(rec.inputs[l - rec.layer], **{**kwargs, _cache_argument(layer, kwargs): cache})
        entry = cache.layers[layer.self_attn.layer_idx]
        rec.kv[l] = (entry.keys, entry.values)
    return rec.kv[l]


def _suffix(kwargs: dict, p: int) -> dict:
    """A layer's recorded arguments for the queries from position p on (rotary tables, position ids
    and the mask's rows)."""
    out = dict(kwargs)
    if out.get("position_embeddings") is not None:
        out["position_embeddings"] = tuple(t[..., p:, :] for t in out["position_embeddings"])
    for key in ("position_ids", "cache_position"):
        if torch.is_tensor(out.get(key)):
            out[key] = out[key][..., p:]
    if torch.is_tensor(out.get("attention_mask")):
        out["attention_mask"] = out["attention_mask"][..., p:, :]
    return out


def _logits(vlm, hidden: torch.Tensor) -> torch.Tensor:
    """The model's next-token logits from the last decoder layer's output: final norm, head, and the
    final soft-capping where the family has one (Gemma)."""
    lm = vlm.adapter.language_model(vlm.model)
    logits = vlm.model.get_output_embeddings()(lm.norm(hidden)).float()
    cap = getattr(vlm.config.text_config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def _score(vlm, tail: torch.Tensor, ref_log_probs: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
    """(kl [C], answer log-probability [C]) from the last decoder layer's outputs `tail` [C, steps, D]
    at the last prompt position and the answer's positions (all but its last token)."""
    c, steps = tail.shape[:2]
    log_p = torch.log_softmax(_logits(vlm, tail), -1)  # [C, steps, V]
    kl = (ref_log_probs.exp() * (ref_log_probs - log_p[:, 0])).sum(-1)
    taken = log_p.gather(2, ids[None, :steps, None].expand(c, -1, 1).to(log_p.device))[..., 0]
    return kl, (taken * mask[None, :steps].to(taken.device)).sum(1)


def replay(vlm, rec: Recorded, ablated: torch.Tensor, how: str, ref_log_probs: torch.Tensor,
           ids: torch.Tensor, mask: torch.Tensor, image_mean: torch.Tensor | None = None, *,
           start: int | None = None, mask_from: int | None = None, prefix: int = 0):
    """Effects of ablating, per candidate c, the image tokens `ablated[c]` ([C, n] bool, column space).

    The replay runs layers `start` (default rec.layer) .. L-1 from the recorded states entering
    `start`. how "mask"/"drop": the candidates' keys are masked for every other query in layers
    `mask_from` (default `start`) .. L-1; "zero"/"mean" (start == 0): their states entering layer 0
    become zeros or `image_mean` [D]. (A replay masking from a later layer than it starts
    recomputes what the recorded states hold: tests compare the two.)

    `prefix` p > 0: no candidate touches positions < p, and no query there attends past p-1
    (causal attention; the caller knows, from the layout, where the first ablated token sits). So
    only queries p .. Q-1 are replayed, over the recorded keys and values of positions < p as a
    KV cache: the cost follows the part of the sequence each candidate changes.

    Returns (kl [C], answer log-probability [C]) on the model's device:
    kl = KL(ref || ablated) at the last prompt position, log p = sum_t mask[t] log p(ids[t]).
    """
    start = rec.layer if start is None else start
    c = ablated.shape[0]
    full = rec.inputs[start - rec.layer].shape[1]  # Q
    hidden = rec.inputs[start - rec.layer][:, prefix:].expand(c, -1, -1)  # the replayed queries
    q = hidden.shape[1]
    at = torch.zeros(c, full, dtype=torch.bool, device=hidden.device)  # ablated tokens, over every key
    at[:, rec.image_positions] = ablated.to(hidden.device)
    blocked = None
    if how in ("zero", "mean"):
        value = torch.zeros_like(hidden[0, 0]) if how == "zero" else image_mean.to(hidden.dtype)
        hidden = torch.where(at[:, prefix:, None], value, hidden)
    else:
        diagonal = torch.arange(prefix, full, device=hidden.device)[:, None] == torch.arange(full, device=hidden.device)
        blocked = at[:, None, :] & ~diagonal  # [C, q, Q]
    if prefix and blocked is None:  # an explicit mask: SDPA's own causal flag aligns q < k queries wrongly
        blocked = torch.zeros(1, q, full, dtype=torch.bool, device=hidden.device)
    cache = DynamicCache() if prefix else None
    first = start if mask_from is None else mask_from
    skip = start - rec.layer
    for l, kwargs, added in zip(range(start, vlm.num_layers), rec.kwargs[skip:], rec.added[skip:]):
        layer = vlm.decoder_layers[l]
        if prefix:
            keys, values = layer_kv(vlm, rec, l)
            cache.update(keys[..., :prefix, :].expand(c, -1, -1, -1), values[..., :prefix, :].expand(c, -1, -1, -1),
                         layer.self_attn.layer_idx)
            kwargs = {**_suffix(kwargs, prefix), _cache_argument(layer, kwargs): cache}
        if blocked is not None and l >= first:
            kwargs = {**kwargs, "attention_mask": without(kwargs.get("attention_mask"), blocked, hidden.dtype)}
        hidden = layer(hidden, **kwargs)
        if added is not None:
            hidden = hidden + added[:, prefix:]
    return _score(vlm, hidden[:, rec.prompt_len - 1 - prefix:], ref_log_probs, ids, mask)


def kept_positions(rec: Recorded, kept: torch.Tensor) -> torch.Tensor:
    """[C, Q - n + k] ascending sequence positions of every non-image token and the kept image
    columns `kept` [C, k] (LongTensor on the model's device)."""
    other = rec.other_positions.expand(kept.shape[0], -1)
    return torch.cat([other, rec.image_positions[kept]], 1).sort(1).values


GATHERED = ("position_embeddings", "position_ids", "attention_mask")  # the arguments indexed by position


def _gathered(kwargs: dict, positions: torch.Tensor) -> dict:
    """The `GATHERED` arguments of a layer for the sequences made of `positions` [C, L'] (ascending):
    rotary tables, position ids and the mask gathered (rows and columns)."""
    out = {}
    if kwargs.get("position_embeddings") is not None:
        out["position_embeddings"] = tuple(t[0][positions] for t in kwargs["position_embeddings"])
    if torch.is_tensor(kwargs.get("position_ids")):
        ids = kwargs["position_ids"]
        out["position_ids"] = ids[..., 0, :][..., positions] if ids.dim() == 3 else ids[0][positions]
    mask = kwargs.get("attention_mask")
    if torch.is_tensor(mask):  # None stays None: plain causal attention over an ascending order
        out["attention_mask"] = mask[0, 0][positions[:, :, None], positions[:, None, :]][:, None]
    return out


def replay_kept(vlm, rec: Recorded, positions: torch.Tensor, ref_log_probs: torch.Tensor, ids: torch.Tensor,
                mask: torch.Tensor, *, start: int | None = None):
    """Effects of keeping, per candidate c, only the sequence positions `positions[c]` ([C, L'],
    ascending: every non-image token and the kept image tokens, `kept_positions`) from layer `start`
    (default rec.layer) on: the engine's "drop" with original positions, computed on the shortened
    sequences, so a copy costs what its kept tokens cost. Returns (kl [C], answer log-probability [C])
    as `replay`."""
    start = rec.layer if start is None else start
    hidden = rec.inputs[start - rec.layer][0][positions]  # [C, L', D]
    skip = start - rec.layer
    gathered = {}  # layers of one type share their mask and rotary tables: gather them once per replay
    for l, kwargs, added in zip(range(start, vlm.num_layers), rec.kwargs[skip:], rec.added[skip:]):
        key = tuple(id(kwargs.get(name)) for name in GATHERED)
        if key not in gathered:
            gathered[key] = _gathered(kwargs, positions)
        rest = {k: v for k, v in kwargs.items() if k not in GATHERED and k != "cache_position"}  # no cache
        hidden = vlm.decoder_layers[l](hidden, **rest, **gathered[key])
        if added is not None:
            hidden = hidden + added[0][positions]
    steps = rec.inputs[0].shape[1] - rec.prompt_len + 1  # the last prompt token and the answer: the tail
    return _score(vlm, hidden[:, -steps:], ref_log_probs, ids, mask)
