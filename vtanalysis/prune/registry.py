"""The registry of pruning methods: what each needs, where it acts, and how it chooses.

Every method is a `Method` whose `choose(inputs, keep, stage)` returns indices into the current
image tokens (see `engine.StageInputs`) and whose `plan(vlm, n_image, keep, **knobs)` returns its
stages: [(first layer seeing the kept set, tokens kept)]. Pre-LLM methods are one stage at layer 0.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import VTAError
from . import plugins
from .methods import adafv, adaptinfer, adaptprune, cdpruner, dart, diversity, fastv, spatial, visionzip
from .budget import average_tokens, bisect_increasing, keep_count, scale_to_average, table_counts
from .engine import split_newlines


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    where: str                      # "llm": inside the decoder; "pre": before the LLM; "image": on the image
    needs: tuple[str, ...]          # what the chooser reads: see `engine.Pruner`'s `needs`
    choose: Callable
    plan: Callable
    positions: str = "original"     # default position-id convention
    # optional context for the run: prepare(vlm, batch, first_stage, vision_capture, crops) (VisionZip's merge)
    prepare: Callable | None = None
    # keyword options `prune.run` passes to `choose` instead of `plan` (e.g. seed, dedupe)
    choose_knobs: tuple[str, ...] = ()
    # pre-LLM only: the chooser's order (repeats included) is the image part of the sequence
    ordered: bool = False
    # defaults that depend on the model: resolve_knobs(vlm, choose_knobs) -> choose_knobs (CDPruner's CLIP)
    resolve_knobs: Callable | None = None

    @property
    def plan_knobs(self) -> list[str]:
        params = list(inspect.signature(self.plan).parameters.values())[3:]  # after vlm, n_image, keep
        return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    @property
    def knobs(self) -> list[str]:
        """The keyword options `prune.run(..., **knobs)` accepts for this method (e.g. layer, seed)."""
        return self.plan_knobs + list(self.choose_knobs)

    def split_knobs(self, knobs: dict) -> tuple[dict, dict]:
        """(plan knobs, choose knobs); an option the method does not have is an error naming the ones it has."""
        takes_any = any(p.kind == p.VAR_KEYWORD and p.name != "_" for p in inspect.signature(self.plan).parameters.values())
        unknown = [k for k in knobs if k not in self.knobs]
        if unknown and not takes_any:
            raise VTAError(f"method '{self.name}' has no option {', '.join(map(repr, unknown))}; its options: "
                           f"{', '.join(self.knobs) or 'none'}.")
        choose = {k: v for k, v in knobs.items() if k in self.choose_knobs}
        return {k: v for k, v in knobs.items() if k not in choose}, choose


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add `method` to the registry, so `prune.run`, `prune.select`, `vtanalysis eval` and the figures
    accept its name. A method is a `Method`: a `plan(vlm, n_image, keep, **knobs)` returning its
    stages [(first layer seeing the kept set, tokens kept)] and a `choose(inputs, keep, stage)`
    returning `keep` indices into the current image tokens (`engine.StageInputs`), on the model's device."""
    if not isinstance(method, Method):
        raise VTAError(f"register takes a prune.Method, not {type(method).__name__}.")
    _REGISTRY[method.name] = method
    return method


def get(name: str) -> Method:
    """The method called `name`; unknown names get an error listing all registered ones."""
    if name not in _REGISTRY:
        plugins.load()
    if name not in _REGISTRY:
        raise VTAError(f"unknown pruning method '{name}'. Registered methods: {', '.join(methods())}.")
    return _REGISTRY[name]


def methods() -> list[str]:
    """Every registered method's name (plugins included, see `prune.plugins`)."""
    plugins.load()
    return sorted(_REGISTRY)


# -- stage plans ------------------------------------------------------------------------------------
def single_stage(default_layer: int, rounding: str = "floor"):
    """One stage at `layer` (default `default_layer`, clipped to the model's depth) keeping `keep`
    tokens (a ratio becomes a count by the authors' `rounding`, see `budget.keep_count`)."""
    def plan(vlm, n_image, keep, layer=None, **_):
        k = layer if layer is not None else min(default_layer, vlm.num_layers - 1)
        return [(k, keep_count(keep, n_image, rounding))]
    return plan


def no_stage(vlm, n_image, keep, **_):
    return []


def scaled_layers(vlm, layers: tuple[int, ...], of: int = 32) -> list[int]:
    """A schedule for an `of`-layer model mapped proportionally onto this model's depth (>= 1,
    increasing, unique)."""
    depth = vlm.num_layers
    if depth == of:
        return list(layers)
    out = []
    for l in layers:
        k = min(max(1, round(l * depth / of)), depth - 1)
        if not out or k > out[-1]:
            out.append(k)
    return out


def budget_tokens(keep: float | int, n_image: int) -> float:
    """A multi-stage method's budget: the average image tokens per decoder layer (keep validated)."""
    keep_count(keep, n_image)
    return n_image * keep if isinstance(keep, float) else float(keep)


def adaptinfer_plan(vlm, n_image, keep, layers=None, counts=None, ratios=None, **_):
    """AdaptInfer's multi-stage schedule.

    LLaVA (default): prune after layers 1, 10, 20 (stages start at 2, 11, 21; scaled to other
    depths) with the authors' LLaVA-1.5-7B per-stage counts for average budgets 128, 64, 48 and 32
    of `adaptinfer.PRESET_IMAGE_TOKENS` tokens. Qwen2-VL: prune after layers 0, 9, 19 (of 28,
    scaled to other depths) with the authors' ratios 0.5 / 0.6 / 0.3 of the current count
    (`adaptinfer.chained_counts`). `ratios=` gives the counts by that rule directly (keep unused).
    `keep` sets the budget B, the image-token count averaged over the decoder layers as the authors
    count it (`adaptinfer.authors_average`, which reproduces their presets: 290/72/18 averages
    128.8). A published budget on the published geometry uses the preset as published (Qwen2-VL:
    B equal to the ratios' own average); otherwise the preset (LLaVA: nearest in share) is scaled,
    capped at n_image, until its average equals B (bisection).
    `counts` overrides the per-stage kept counts; `layers` the stage layers.
    """
    qwen = getattr(getattr(vlm, "adapter", None), "mrope", False)  # Qwen2-VL's M-RoPE family
    if layers is not None:
        stage_layers = list(layers)
    elif qwen:
        stage_layers = scaled_layers(vlm, tuple(l + 1 for l in adaptinfer.QWEN_SCHEDULE_LAYERS), adaptinfer.QWEN_DEPTH)
    else:
        stage_layers = scaled_layers(vlm, tuple(l + 1 for l in adaptinfer.SCHEDULE_LAYERS))

    def average(c):
        return adaptinfer.authors_average(n_image, list(zip(stage_layers, c)), vlm.num_layers)

    if counts is None and ratios is not None:
        counts = adaptinfer.chained_counts(n_image, ratios)
    if counts is None and qwen:
        preset = adaptinfer.chained_counts(n_image, adaptinfer.QWEN_RATIOS[: len(stage_layers)])
        budget = budget_tokens(keep, n_image)
        counts = preset if abs(average(preset) - budget) < 0.5 else scale_to_average(preset, budget, n_image, average)
    elif counts is None:
        presets = {b: c[: len(stage_layers)] for b, c in adaptinfer.PRESETS_7B.items()}
        counts = table_counts(presets, adaptinfer.PRESET_IMAGE_TOKENS, budget_tokens(keep, n_image), n_image,
                              vlm.num_layers, average)
    if len(counts) != len(stage_layers):
        raise VTAError(f"AdaptInfer got {len(counts)} stage counts for {len(stage_layers)} stage layers.")
    counts = [min(c, n_image) for c in counts]
    if any(b > a for a, b in zip(counts, counts[1:])):
        raise VTAError(f"AdaptInfer stage counts must not grow: {counts}.")
    return list(zip(stage_layers, counts))


def pre_stage(rounding: str = "floor"):
    """A pre-LLM method: every decoder layer sees the kept tokens only."""
    def plan(vlm, n_image, keep, **_):
        return [(0, keep_count(keep, n_image, rounding))]
    return plan


# SparseVLM's per-budget kept counts at its three pruning layers (authors' code), by the budget
# they are published for, on LLaVA-1.5's image tokens (SPARSEVLM_IMAGE_TOKENS).
SPARSEVLM_TABLES = {192: (300, 200, 110), 128: (303, 110, 36), 96: (238, 48, 26), 64: (66, 30, 17)}
SPARSEVLM_IMAGE_TOKENS = 576  # ok-literal: the token count the published tables were made for


def sparsevlm_plan(vlm, n_image, keep, layers=None, counts=None, **_):
    """SparseVLM (prune only). The authors score with layers 2, 6 and 15 (of 32) and prune their
    outputs, so the stages start at layers 3, 7 and 16. `keep` is the budget averaged over the
    decoder layers: a published budget (`SPARSEVLM_TABLES` on LLaVA-1.5's tokens, 32 layers) uses the authors'
    table as published; any other budget scales the table nearest in share until the average
    equals it. `counts` overrides the per-stage counts. The authors' recycling of pruned tokens
    into merged ones is not reproduced."""
    stage_layers = list(layers) if layers is not None else scaled_layers(vlm, (3, 7, 16))
    if counts is None:
        tables = {b: c[: len(stage_layers)] for b, c in SPARSEVLM_TABLES.items()}
        counts = table_counts(tables, SPARSEVLM_IMAGE_TOKENS, budget_tokens(keep, n_image), n_image, vlm.num_layers,
                              lambda c: average_tokens(n_image, list(zip(stage_layers, c)), vlm.num_layers))
    return list(zip(stage_layers, [min(c, n_image) for c in counts]))


def pyramid_plan(vlm, n_image, keep, layers=None, ratios=None, **_):
    """PyramidDrop: stages at layers 8, 16, 24 (of 32) keeping lambda, lambda^2, lambda^3 of the image
    tokens. `keep` is the budget averaged over the decoder layers and sets lambda (bisection; the
    authors' default lambda = 0.5 is keep ~0.47 at 32 layers); `ratios` overrides the per-stage shares.
    """
    stage_layers = list(layers) if layers is not None else scaled_layers(vlm, (8, 16, 24))
    if ratios is None:
        budget = budget_tokens(keep, n_image)

        def average(lam):
            return average_tokens(n_image, [(l, n_image * lam ** (i + 1)) for i, l in enumerate(stage_layers)],
                                  vlm.num_layers)

        if budget < average(0.0):
            raise VTAError(f"pyramiddrop keeps every image token before layer {stage_layers[0]}, so its average "
                           f"budget is at least {average(0.0) / n_image:.3f} of them; got keep={keep}.")
        _, lam = bisect_increasing(average, budget, 0.0, 1.0)
        ratios = [lam ** (i + 1) for i in range(len(stage_layers))]
    return [(l, max(1, int(n_image * r + 1e-9))) for l, r in zip(stage_layers, ratios)]


def vtw_plan(vlm, n_image, keep, layer=None, **_):
    """VTW: withdraw every image token at layer k: `layer`, or round(keep * depth) for a budget of
    keep (the average image tokens per layer is then ~keep of them; 15 of 32 in the paper)."""
    if layer is None:
        share = budget_tokens(keep, n_image) / n_image
        layer = min(max(1, round(share * vlm.num_layers)), vlm.num_layers - 1)
    return [(layer, 0)]


# -- choosers ---------------------------------------------------------------------------------------
def choose_fastv(inputs, keep, stage):
    return fastv.select(inputs.last_row, keep)


def choose_adaptprune(center_sigma=12.0, sigma_d=1.5, sigma_s=0.05, window=5.0):
    def choose(inputs, keep, stage):
        if inputs.grids is None:
            raise VTAError("AdaptPrune needs intact image grids: it prunes in a single stage.")
        return adaptprune.select(inputs.last_row, inputs.keys, inputs.grids, keep, center_sigma=center_sigma,
                                 sigma_d=sigma_d, sigma_s=sigma_s, window=window)
    return choose


def choose_adaptinfer(inputs, keep, stage):
    scores = adaptinfer.scores_from_rows(inputs.text_to_text, inputs.text_to_image)
    return fastv.select(scores, keep)


def choose_pyramid(inputs, keep, stage):
    """PyramidDrop (Cooperx521/PyramidDrop, `pdrop_rank_drop`): the last instruction token's softmax
    over all keys at layer K itself (its q/k on the states entering K), head-mean, over the image tokens."""
    return fastv.select(inputs.last_row, keep)


def choose_none(inputs, keep, stage):
    return torch.arange(keep, device=inputs.columns.device)


def sample_noise(inputs, seed: int) -> torch.Tensor:
    """[n] uniform noise, on the model's device, drawn for this sample alone: sample b of a batch
    draws with seed + b (so `evaluate`, passing seed + the chunk's first index, gives every
    sample of a dataset its own draw at any batch size; the same seed reproduces it)."""
    device = inputs.columns.device
    g = torch.Generator(device=device).manual_seed(seed + inputs.sample)
    return torch.rand(len(inputs.columns), generator=g, device=device)


def choose_random(inputs, keep, stage, seed=0):
    """Table 5 'random': `keep` tokens drawn uniformly, per sample (`sample_noise`)."""
    return torch.topk(sample_noise(inputs, seed), keep).indices.sort().values


def choose_last(inputs, keep, stage):
    n = len(inputs.columns)
    return torch.arange(n - keep, n, device=inputs.columns.device)


def _on_grids(inputs, transform):
    """Apply `transform(map [h, w]) -> [h, w]` to last-row scores grid by grid (other columns unchanged)."""
    scores = inputs.last_row.clone()
    for start, h, w in inputs.grids or []:
        scores[start:start + h * w] = transform(scores[start:start + h * w].view(h, w)).flatten()
    return scores


def choose_avgpool(inputs, keep, stage):
    """Table 5: 3x3 stride-1 average pooling of the scores, then top-k."""
    pooled = _on_grids(inputs, lambda m: F.avg_pool2d(m[None, None], 3, 1, 1, count_include_pad=False)[0, 0])
    return fastv.select(pooled, keep)


def _one_per_block(inputs, keep, values):
    """Table 5: one candidate per 3x3 block (the cell where `values` peaks, first in row-major
    order on ties), then the top-k candidates by score. values: [n] over the current image tokens."""
    scores = inputs.last_row
    candidates = torch.zeros_like(scores, dtype=torch.bool)
    blocks = 0
    for start, h, w in inputs.grids or []:
        ph, pw = -h % 3, -w % 3  # pad partial blocks at the bottom/right edge with -inf
        grid = F.pad(values[start:start + h * w].view(1, 1, h, w), (0, pw, 0, ph), value=float("-inf"))
        _, idx = F.max_pool2d(grid, 3, 3, return_indices=True)  # flat index into the padded plane per block
        idx = idx.flatten()
        candidates[start + idx // (w + pw) * w + idx % (w + pw)] = True
        blocks += idx.numel()
    # fewer blocks than the budget: fill by score (run always, possibly for 0 tokens: same ops at every keep)
    rest = fastv.select(scores.masked_fill(candidates, float("-inf")), max(0, keep - blocks))
    candidates[rest] = True
    return fastv.select(scores.masked_fill(~candidates, float("-inf")), keep)


def choose_max_block(inputs, keep, stage):
    return _one_per_block(inputs, keep, inputs.last_row)


def choose_random_block(inputs, keep, stage, seed=0):
    """Table 5: a random token per 3x3 block (`sample_noise`), then the top-k of those by score."""
    return _one_per_block(inputs, keep, sample_noise(inputs, seed))


def choose_skip(inputs, keep, stage):
    """Table 5 'skip': every other token of the top-2k ranking."""
    order = torch.argsort(inputs.last_row, descending=True)
    picks = order[: 2 * keep: 2]
    if len(picks) < keep:
        picks = torch.cat([picks, order[1::2][: keep - len(picks)]])
    return picks.sort().values


def choose_fitprune(inputs, keep, stage):
    """Single-layer FitPrune (AdaptPrune Table 5), the authors' rule (ywh187/FitPrune,
    `LlamaAttention.forward`): take the max over heads of every attention entry first, then
    score(v) = (sum over text queries of hm[t, v]) x (mean over image queries of hm[u, v]);
    the lowest scores are dropped."""
    cross = inputs.text_to_image.amax(0).sum(0)       # [n]: head-max, summed over the text queries
    self_term = inputs.image_to_image.amax(0).mean(0)  # [n]: head-max, averaged over the image queries
    return fastv.select(cross * self_term, keep)


def choose_dart(inputs, keep, stage, image_pivots=dart.IMAGE_PIVOTS, text_pivots=dart.TEXT_PIVOTS):
    return dart.select(inputs.prev_keys, inputs.normed_hidden, len(inputs.columns), keep, image_pivots, text_pivots)


def sparsevlm_raters(text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
    """SparseVLM's text raters (Gumpest/SparseVLMs, `LlamaDynamicvitModel.forward`), chosen once from
    the LLM input embeddings: r(t) = mean over image tokens v of softmax_over_text(v . t) (no scaling);
    raters are the text tokens with r above its mean. [T, D], [N, D] -> [T] bool. When no token is
    above the mean (all equal) every text token rates (the authors' code would have no raters)."""
    r = torch.softmax(image_embeds.float() @ text_embeds.float().T, dim=1).mean(0)
    raters = r > r.mean()
    return raters | ~raters.any()


def choose_sparsevlm(inputs, keep, stage):
    """SparseVLM rating (Gumpest/SparseVLMs, `attn_postprocess_topk`): the pruning layer's head-mean
    attention rows of the raters (`sparsevlm_raters`), averaged over raters, over the current image
    tokens; keep the top-k."""
    raters = sparsevlm_raters(inputs.text_embeds, inputs.image_embeds)
    weight = raters.float() / raters.sum()
    return fastv.select(weight @ inputs.text_to_image.mean(0), keep)


# -- pre-LLM choosers --------------------------------------------------------------------------------
def among_patches(pick):
    """A pre-LLM chooser with the authors' per-crop budget: each crop (an image; a LLaVA-NeXT base
    image or tile) keeps `crop_keep` of its patches by `pick(inputs, patches, k, **knobs)` -> indices
    into `patches`; LLaVA-NeXT newline tokens are kept on top. Without crops (a chooser called by
    hand) the patches are one crop keeping `keep` minus the newlines. The result is in sequence
    order (a token `pick` repeats, as AdaFV's authors do with dedupe=False, sits next to itself)."""
    def choose(inputs, keep, stage, **knobs):
        newlines, patches = split_newlines(inputs)
        crops = inputs.crops if inputs.crops is not None else [patches]
        budgets = inputs.crop_keep if inputs.crop_keep is not None else [keep - len(newlines)]
        picked = torch.cat([newlines, *[crop[pick(inputs, crop, k, **knobs)] for crop, k in zip(crops, budgets) if k > 0]])
        rank = inputs.positions[picked] if inputs.positions is not None else picked
        return picked[torch.argsort(rank, stable=True)]
    return choose


def _t2i(inputs, patches, cosine=False):
    """T2I scores of `patches`, normalised over all the sample's patches (newlines excluded), as the
    authors' softmax runs over every image token of the sample; computed once per sample and stage."""
    name = "_cosine_scores" if cosine else "_t2i_scores"
    if getattr(inputs, name, None) is None:
        _, every = split_newlines(inputs)
        score = adafv.cosine_scores if cosine else adafv.t2i_scores
        full = torch.full((len(inputs.columns),), float("-inf"), device=inputs.columns.device)
        full[every] = score(inputs.text_embeds, inputs.image_embeds[every])
        setattr(inputs, name, full)
    return getattr(inputs, name)[patches]


def pick_saliency(inputs, patches, k):
    return fastv.select(inputs.saliency[patches], k)


def pick_t2i(inputs, patches, k):
    return fastv.select(_t2i(inputs, patches), k)


def pick_sacmam(inputs, patches, k, dedupe=True):
    return adafv.select(_t2i(inputs, patches), inputs.saliency[patches], k, dedupe=dedupe)


def pick_fixed_mixture(inputs, patches, k, dedupe=True):
    return adafv.select(_t2i(inputs, patches, cosine=True), inputs.saliency[patches], k, min_share=0.5, dedupe=dedupe)


def choose_divprune(inputs, keep, stage):
    """DivPrune over every image token the LLM would receive (LLaVA-NeXT newlines are candidates
    too, as in the authors' code), kept in sequence order."""
    return diversity.divprune(inputs.image_embeds, keep).sort().values


def pick_scope(inputs, patches, k, alpha=1.0):
    return diversity.scope(inputs.vision_features[patches], inputs.saliency[patches], k, alpha)


def pick_vispruner(inputs, patches, k, important_ratio=0.5):
    return diversity.vispruner(inputs.vision_features[patches], inputs.saliency[patches], k, important_ratio)


def choose_cdpruner(inputs, keep, stage, clip=None):
    """CDPruner (`prune.cdpruner`): relevance over all the sample's patches, one DPP per crop."""
    if inputs.question is None:
        raise VTAError("cdpruner encodes the question with CLIP: prepare the batch with questions=, not prompts=.")
    newlines, patches = split_newlines(inputs)
    rel = torch.zeros(len(inputs.columns), device=inputs.columns.device)
    rel[patches] = cdpruner.relevance(clip, inputs.vision_features[patches], inputs.question)
    x = F.normalize(inputs.image_embeds.float(), dim=-1)

    def pick(inputs, crop, k):
        kernel = rel[crop, None] * (x[crop] @ x[crop].T) * rel[None, crop]
        return cdpruner.greedy_map(kernel, k)
    return among_patches(pick)(inputs, keep, stage)


def cdpruner_knobs(vlm, knobs):
    return {**knobs, "clip": cdpruner.require_clip(vlm, knobs.get("clip"))}


def choose_visionzip(inputs, keep, stage):
    return visionzip.choose(inputs)


def prepare_visionzip(vlm, batch, stage, capture, crops):
    return visionzip.ProjectorMerge(vlm, batch, stage, crops, capture)


for m in [
    Method("none", "no pruning, through the same path (the baseline)", "llm", (), choose_none, no_stage),
    Method("fastv", "FastV: top-k of layer K-1 last-row attention (K=2)", "llm", ("last_row",), choose_fastv,
           single_stage(fastv.LAYER, rounding="round")),
    Method("adaptprune", "AdaptPrune: corrected attention + adaptive NMS over distance and key similarity",
           "llm", ("last_row", "keys"), choose_adaptprune(), single_stage(adaptprune.LAYER)),
    Method("adaptprune-correction", "AdaptPrune ablation (Table 4 b): Gaussian correction only", "llm",
           ("last_row",), choose_adaptprune(sigma_d=0.0, sigma_s=None), single_stage(adaptprune.LAYER)),
    Method("adaptprune-distance", "AdaptPrune ablation (Table 4 c): correction + distance decay", "llm",
           ("last_row",), choose_adaptprune(sigma_s=None), single_stage(adaptprune.LAYER)),
    Method("random", "Table 5: random tokens (per-sample draws from seed)", "llm", (), choose_random,
           single_stage(adaptprune.LAYER), choose_knobs=("seed",)),
    Method("random-3x3", "Table 5: a random token per 3x3 block, then top-k", "llm", ("last_row",),
           choose_random_block, single_stage(adaptprune.LAYER), choose_knobs=("seed",)),
    Method("max-3x3", "Table 5: the best token per 3x3 block, then top-k", "llm", ("last_row",), choose_max_block,
           single_stage(adaptprune.LAYER)),
    Method("avgpool-3x3", "Table 5: 3x3 average-pooled scores, then top-k", "llm", ("last_row",), choose_avgpool,
           single_stage(adaptprune.LAYER)),
    Method("skip", "Table 5: every other token of the top 2k", "llm", ("last_row",), choose_skip,
           single_stage(adaptprune.LAYER)),
    Method("last-k", "Table 5: the last k image tokens", "llm", (), choose_last, single_stage(adaptprune.LAYER)),
    Method("adaptinfer", "AdaptInfer: text-prior-weighted attention, multi-stage schedule", "llm",
           ("text_rows",), choose_adaptinfer, adaptinfer_plan, positions="renumber"),
    Method("pyramiddrop", "PyramidDrop: layer K's own last-token attention over the image, 3 stages, renumbered",
           "llm", ("own_rows",), choose_pyramid, pyramid_plan, positions="renumber"),
    Method("vtw", "VTW: withdraw all image tokens at layer k", "llm", (), choose_none, vtw_plan),
    Method("fitprune", "Table 5: single-layer FitPrune (text->image x image->image attention, head max)", "llm",
           ("text_rows", "image_rows"), choose_fitprune, single_stage(adaptprune.LAYER)),
    Method("sparsevlm", "SparseVLM, prune only: text raters' attention at 3 stages, positions renumbered", "llm",
           ("text_rows", "embeds"), choose_sparsevlm, sparsevlm_plan, positions="renumber"),
    Method("dart", "DART: per key-norm pivot (4 image + 4 text), the image tokens least similar to it, at layer K=2",
           "llm", ("prev_keys", "normed_hidden"), choose_dart, single_stage(dart.LAYER, rounding="round"),
           choose_knobs=("image_pivots", "text_pivots")),
    Method("fastervlm", "FasterVLM: top-k vision [CLS] attention, before the LLM", "pre", ("cls",),
           among_patches(pick_saliency), pre_stage(rounding="round"), positions="renumber"),
    Method("adafv", "AdaFV: self-adaptive mixture (SACMAM) of T2I similarity and [CLS] saliency, before the LLM",
           "pre", ("cls", "embeds"), among_patches(pick_sacmam), pre_stage(), positions="renumber",
           choose_knobs=("dedupe",), ordered=True),
    Method("adafv-fixed", "AdaFV fixed mixture (eq. 3): half the budget by cosine T2I, half by [CLS] saliency",
           "pre", ("cls", "embeds"), among_patches(pick_fixed_mixture), pre_stage(), positions="renumber",
           choose_knobs=("dedupe",), ordered=True),
    Method("adafv-t2i", "AdaFV part: T2I similarity only (eq. 4), before the LLM", "pre", ("embeds",),
           among_patches(pick_t2i), pre_stage(), positions="renumber"),
    Method("divprune", "DivPrune: greedy max-min diversity (1 - cosine) of the LLM's image embeddings, before the LLM",
           "pre", ("embeds",), choose_divprune, pre_stage(rounding="round"), positions="renumber"),
    Method("scope", "SCOPE: greedy coverage gain of vision features x [CLS] saliency^alpha, per crop, before the LLM",
           "pre", ("cls", "vision_features"), among_patches(pick_scope), pre_stage(), positions="renumber",
           choose_knobs=("alpha",)),
    Method("cdpruner", "CDPruner: conditional DPP, CLIP question relevance x projector-output similarity, per crop",
           "pre", ("cls", "cls_token", "vision_features", "embeds"), choose_cdpruner, pre_stage(), positions="renumber",
           choose_knobs=("clip",), resolve_knobs=cdpruner_knobs),
    Method("vispruner", "VisPruner: top [CLS]-attention tokens + diverse ones left by rounds of duplicate removal, per crop",
           "pre", ("cls", "vision_features"), among_patches(pick_vispruner), pre_stage(), positions="renumber",
           choose_knobs=("important_ratio",)),
    Method("downsample", "baseline: the image resized so the processor yields about the budget (dynamic-resolution "
           "families; through `prune.downsampled` + 'none')", "image", (), choose_none, no_stage),
    Method("uniform", "baseline: tokens evenly spaced in 2-D over each grid, before the LLM", "pre", (),
           spatial.choose_uniform, pre_stage(rounding="round"), positions="renumber"),
    Method("pool", "baseline: 2-D average pooling of the image embeddings per grid to the budget, before the LLM",
           "pre", (), spatial.choose_uniform, pre_stage(rounding="round"), positions="renumber",
           prepare=spatial.prepare_pool),
    Method("visionzip", "VisionZip: [CLS] + dominant [CLS]-attention tokens + contextual tokens merged by key similarity",
           "pre", ("cls", "cls_token"), choose_visionzip, pre_stage(), positions="renumber", prepare=prepare_visionzip,
           ordered=True),
]:
    register(m)
