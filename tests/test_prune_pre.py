"""Pre-LLM pruning (pruning issue): FasterVLM, AdaFV, VisionZip.

- [CLS] saliency read through the SDPA tap equals the eager vision attentions (METHODS.md: layer
  -2, head-mean) and lands on the right layout columns, tiles and newlines included (LLaVA-NeXT);
- FasterVLM, VisionZip and AdaFV (dedupe=False) runs equal hand-built forwards of the shortened
  input sequence, transcribed from the authors' code (VisionZip: [CLS] + dominant + contextual
  tokens = target + mean of its joiners, in the authors' order; AdaFV: repeated tokens);
- LLaVA-NeXT budgets are per crop with newline tokens on top (FasterVLM's `encode_images`);
- VisionZip's and AdaFV's pure selection functions keep their budgets and rules.
"""
import pytest
import torch

from conftest import QUESTIONS
from reference import lm_inputs
from vtanalysis import prune
from vtanalysis.models import tiny
from vtanalysis.prune.methods import adafv, visionzip
from vtanalysis.prune.vision import VisionCapture, projector_rows, to_columns


@pytest.fixture(scope="module")
def llava():
    return tiny.build("llava", seed=2, num_layers=4)


@torch.no_grad()
def eager_vision(vlm, pixel_values):
    """Eager vision attentions and hidden states (FasterVLM's `attentions[select_layer]`)."""
    vlm.model.set_attn_implementation("eager")
    try:
        return vlm.model.model.vision_tower(pixel_values, output_attentions=True, output_hidden_states=True)
    finally:
        vlm.model.set_attn_implementation("sdpa")


def captured(vlm, batch):
    with VisionCapture(vlm) as cap, torch.no_grad():
        vlm.model(**batch.model_inputs)
    return cap


def test_cls_saliency_equals_eager_attention(llava, images):
    batch = llava.prepare(images, QUESTIONS)
    cap = captured(llava, batch)
    out = eager_vision(llava, batch.model_inputs["pixel_values"])
    want = out.attentions[llava.config.vision_feature_layer][:, :, 0, 1:].mean(1)
    torch.testing.assert_close(cap.saliency, want, atol=1e-6, rtol=0)
    assert (cap.saliency.sum(-1) < 1).all()  # the [CLS] column itself is excluded


def test_next_columns_follow_base_tiles_and_newlines(images):
    """A square 64 px image on the tiny LLaVA-NeXT: base 4x4 grid, then a 2x2 canvas of 4x4 tiles."""
    vlm = tiny.build("llava-next", seed=2, num_layers=4)
    batch = vlm.prepare(images[2:], QUESTIONS[2:])
    lay = batch.layouts[0]
    cap = captured(vlm, batch)
    assert cap.saliency.shape[0] == 5  # base + 2x2 tiles
    cols = to_columns(vlm, batch, cap.saliency[..., None])[0][:, 0]
    assert torch.isnan(cols).nonzero().flatten().tolist() == lay.newline_columns
    base, tiles = lay.grids
    side = base.shape[0]
    torch.testing.assert_close(cols[base.columns], cap.saliency[0])
    canvas = cols[tiles.columns].view(tiles.shape)
    per_row = tiles.shape[1] // side
    for t in range(1, cap.saliency.shape[0]):
        ty, tx = divmod(t - 1, per_row)
        torch.testing.assert_close(canvas[ty * side:(ty + 1) * side, tx * side:(tx + 1) * side].flatten(), cap.saliency[t])
    rows = projector_rows(vlm, batch, cap.saliency.shape[1], cap.saliency.shape[0])[0]
    real = rows[rows >= 0]
    assert sorted(real.tolist()) == list(range(cap.saliency.numel()))  # every projector row exactly once


@torch.no_grad()
def short_sequence_logits(vlm, batch, image_embeds_kept, kept_cols):
    """The LLM on the shortened input: text embeddings + the kept image embeddings, positions 0..L'-1."""
    lm, embeds, _ = lm_inputs(vlm, batch)
    lay = batch.layouts[0]
    keep = torch.ones(embeds.shape[1], dtype=torch.bool)
    keep[lay.image_positions] = False
    keep[lay.image_positions[kept_cols]] = True
    short = embeds.clone()
    short[0, lay.image_positions[kept_cols]] = image_embeds_kept.to(short.dtype)
    short = short[:, keep]
    h = lm(inputs_embeds=short, position_ids=torch.arange(short.shape[1])[None]).last_hidden_state
    return vlm.model.lm_head(h)[:, -1]


def test_fastervlm_equals_the_shortened_sequence(llava, images):
    batch = llava.prepare(images[:1], QUESTIONS[:1])
    keep = 10
    out = eager_vision(llava, batch.model_inputs["pixel_values"])
    saliency = out.attentions[llava.config.vision_feature_layer][0, :, 0, 1:].mean(0)
    want_cols = torch.topk(saliency, keep).indices.sort().values
    _, embeds, _ = lm_inputs(llava, batch)
    want = short_sequence_logits(llava, batch, embeds[0, batch.layouts[0].image_positions[want_cols]], want_cols)
    res = prune.run(llava, batch, "fastervlm", keep, max_new_tokens=1)
    assert torch.equal(res.kept[0][0], want_cols) and res.stage_layers == [0]
    torch.testing.assert_close(res.logits, want, atol=1e-5, rtol=0)


@torch.no_grad()
def visionzip_reference(vlm, batch, dominant, contextual):
    """VisionZip as dvlab-research/VisionZip's `visionzip` does it on one LLaVA-1.5 image: layer -2's
    [CLS] attention summed over heads, top (dominant - 1) patches + [CLS] (index 0), taken in position
    order; the rest filtered in order, targets every max(1, N_rem // contextual)-th, the others joined
    to the most similar target by normalised head-mean keys, contextual = target + mean of its joiners;
    [CLS, dominant, contextual] through the projector; the LLM on the shortened sequence, positions
    0..L'-1."""
    cfg = vlm.config
    out = eager_vision(vlm, batch.model_inputs["pixel_values"])
    layer_idx = cfg.vision_config.num_hidden_layers + cfg.vision_feature_layer
    hidden = out.hidden_states[cfg.vision_feature_layer][0]  # [1 + N, Dv], [CLS] first
    attn = out.attentions[cfg.vision_feature_layer][0]  # [H, 1 + N, 1 + N]
    block = vlm.model.model.vision_tower.vision_model.encoder.layers[layer_idx] \
        if hasattr(vlm.model.model.vision_tower, "vision_model") else vlm.model.model.vision_tower.encoder.layers[layer_idx]
    k = block.self_attn.k_proj(block.layer_norm1(out.hidden_states[layer_idx]))[0]
    metric = k.view(k.shape[0], cfg.vision_config.num_attention_heads, -1).mean(1)  # [1 + N, d]
    cls_attention_sum = attn[:, 0, 1:].sum(0)
    topk = torch.topk(cls_attention_sum, dominant - 1).indices + 1
    all_indices = torch.cat([torch.zeros(1, dtype=torch.long), topk])
    mask = torch.ones(hidden.shape[0], dtype=torch.bool)
    mask[all_indices] = False
    dominant_tokens = hidden[~mask]
    metric_filtered = metric[mask]
    hidden_filtered = hidden[mask]
    n_rem = hidden_filtered.shape[0]
    step = max(1, n_rem // contextual)
    target_indices = torch.arange(0, n_rem, step)[:contextual]
    target_tokens = metric_filtered[target_indices]
    merge_mask = torch.ones(n_rem, dtype=torch.bool)
    merge_mask[target_indices] = False
    tokens_to_merge = metric_filtered[merge_mask]
    similarity = torch.nn.functional.normalize(tokens_to_merge, dim=-1) @ torch.nn.functional.normalize(target_tokens, dim=-1).T
    assign = similarity.argmax(dim=1)
    one_hot = torch.zeros(tokens_to_merge.shape[0], contextual).scatter_(1, assign[:, None], 1.0)
    counts = one_hot.sum(0).clamp(min=1)[:, None]
    aggregated = one_hot.T @ hidden_filtered[merge_mask] / counts
    contextual_tokens = hidden_filtered[target_indices] + aggregated
    image = vlm.model.model.multi_modal_projector(torch.cat([dominant_tokens, contextual_tokens]))
    lm, embeds, _ = lm_inputs(vlm, batch)
    lay = batch.layouts[0]
    start, stop = int(lay.image_positions.min()), int(lay.image_positions.max()) + 1
    short = torch.cat([embeds[:, :start], image[None].to(embeds.dtype), embeds[:, stop:]], dim=1)
    h = lm(inputs_embeds=short, position_ids=torch.arange(short.shape[1])[None]).last_hidden_state
    patches = torch.arange(1, hidden.shape[0])[mask[1:]][target_indices] - 1  # contextual targets' columns
    return vlm.model.lm_head(h)[:, -1], torch.cat([topk - 1, patches]).sort().values


@pytest.mark.parametrize("keep", [16, 9, 30])
def test_visionzip_equals_the_authors_merge_and_order(llava, images, keep):
    batch = llava.prepare(images[1:2], QUESTIONS[1:2])
    dominant, contextual = visionzip.split(keep)
    want_logits, want_kept = visionzip_reference(llava, batch, dominant, contextual)
    res = prune.run(llava, batch, "visionzip", keep, max_new_tokens=1)
    assert torch.equal(res.kept[0][0].sort().values, want_kept)  # [CLS]'s stand-in slot is not reported
    assert res.kept_counts == [[keep]]  # but it is in the sequence
    torch.testing.assert_close(res.logits, want_logits, atol=1e-5, rtol=0)
    fastervlm = prune.run(llava, batch, "fastervlm", keep, max_new_tokens=1)
    assert not torch.allclose(fastervlm.logits, res.logits, atol=1e-4)  # the merge changed the input


def test_next_pre_llm_budgets_are_per_crop_with_newlines_on_top(images):
    """FasterVLM (Theia-4869/FasterVLM, `encode_images`): each crop (base image, each tile) keeps its
    own top-T by [CLS] attention, T = round(keep x the crop's patches); newline tokens on top."""
    from vtanalysis.prune.vision import crop_columns

    vlm = tiny.build("llava-next", seed=2, num_layers=4)
    batch = vlm.prepare(images[:1], QUESTIONS[:1])
    lay = batch.layouts[0]
    crops = crop_columns(vlm, batch)[0]
    assert len(crops) > 1
    sal = captured(vlm, batch).columns(batch)[0][0].cpu()
    full = (vlm.config.vision_config.image_size // vlm.config.vision_config.patch_size) ** 2
    keep = 0.3
    t = round(keep * full)
    want = list(lay.newline_columns)
    for crop in crops:
        want += crop[torch.topk(sal[crop], min(t, len(crop))).indices].tolist()
    res = prune.run(vlm, batch, "fastervlm", keep, max_new_tokens=1)
    assert res.kept[0][0].tolist() == sorted(want)
    for method in ("adafv", "visionzip"):  # each with its authors' rounding of keep x 16 patches
        t = prune.get(method).plan(vlm, full, keep)[0][1]
        got = prune.run(vlm, batch, method, keep, max_new_tokens=1)
        assert got.kept_counts[0][0] == len(lay.newline_columns) + sum(min(t, len(c)) for c in crops)
        assert set(lay.newline_columns) <= set(got.kept[0][0].tolist())
        for crop in crops:  # each crop keeps its own budget (VisionZip: one of them is [CLS]'s slot)
            inside = torch.isin(got.kept[0][0], crop).sum()
            assert inside == min(t, len(crop)) - (method == "visionzip" and t < len(crop))


def test_adafv_dedupe_false_repeats_tokens_as_the_authors_code(llava, images):
    """JiayiV/AdaV `generate`: the two rankings' picks are concatenated and sorted; a token both pick
    enters the LLM twice. The default gives that slot to the next best token instead."""
    batch = llava.prepare(images[:1], QUESTIONS[:1])
    keep = 24
    authors = prune.run(llava, batch, "adafv", keep, max_new_tokens=1, dedupe=False)
    ours = prune.run(llava, batch, "adafv", keep, max_new_tokens=1)
    cols = authors.kept[0][0]
    assert len(cols) == keep and authors.kept_counts == [[keep]]
    assert cols.unique().numel() < keep, "pick a case where the rankings overlap"
    assert ours.kept[0][0].unique().numel() == keep
    assert set(cols.tolist()) <= set(ours.kept[0][0].tolist())
    # the reference: the repeated embeddings, in sorted order, positions 0..L'-1
    lm, embeds, _ = lm_inputs(llava, batch)
    lay = batch.layouts[0]
    start, stop = int(lay.image_positions.min()), int(lay.image_positions.max()) + 1
    short = torch.cat([embeds[:, :start], embeds[:, lay.image_positions[cols]], embeds[:, stop:]], dim=1)
    with torch.no_grad():
        h = lm(inputs_embeds=short, position_ids=torch.arange(short.shape[1])[None]).last_hidden_state
        want = llava.model.lm_head(h)[:, -1]
    torch.testing.assert_close(authors.logits, want, atol=1e-5, rtol=0)


# -- pure selection functions ----------------------------------------------------------------------
@pytest.mark.parametrize("keep", [1, 2, 8, 64, 100, 143, 144])
def test_visionzip_select_budget_dominant_and_groups(keep):
    g = torch.Generator().manual_seed(keep)
    n = 144
    saliency, keys = torch.rand(n, generator=g), torch.randn(n, 16, generator=g)
    choice = visionzip.select(saliency, keys, keep)
    order = choice.order
    assert len(order) == min(keep, n) and order.unique().numel() == len(order)
    if keep >= n:
        assert choice.slot is None and torch.equal(order, torch.arange(n))
        return
    n_dom, n_ctx = visionzip.split(keep)
    dominant = order[1:n_dom]  # [slot ([CLS]), dominant patches ascending, targets]
    assert int(order[0]) == int(choice.slot) and torch.equal(order[n_dom:], choice.targets)
    assert torch.equal(dominant, dominant.sort().values)
    assert set(dominant.tolist()) == set(torch.topk(saliency, n_dom - 1).indices.tolist())
    rest = [j for j in range(n) if j not in set(dominant.tolist())]
    targets = choice.targets.tolist()
    assert targets == rest[::max(1, len(rest) // n_ctx)][:n_ctx] if n_ctx else targets == []
    assert int(choice.slot) in rest and int(choice.slot) not in targets
    if n_ctx:
        others = [j for j in rest if j not in targets]
        assert sorted(j for j in range(n) if choice.owner[j] >= 0) == others  # every other patch joins one
        sim = torch.nn.functional.normalize(keys, dim=-1)
        for j in others[:10]:  # joined the most similar target
            assert int(choice.owner[j]) == max(targets, key=lambda t: float(sim[j] @ sim[t]))


def test_visionzip_default_split_is_the_authors():
    assert [visionzip.split(k) for k in (64, 128, 192)] == [(54, 10), (108, 20), (162, 30)]


def test_visionzip_merge_is_target_plus_mean_of_joiners():
    """Authors: target_hidden + (one_hot^T @ others) / counts.clamp(min=1), not the group mean."""
    features = torch.arange(12.0).view(6, 2)
    owner = torch.tensor([-1, 0, -1, 2, 2, -1])  # 1 joins 0; 3, 4 join 2; 5 is dropped
    merged = visionzip.merge(features, owner, torch.tensor([0, 2, 5]))
    want = torch.stack([features[0] + features[1], features[2] + features[3:5].mean(0), features[5]])
    torch.testing.assert_close(merged, want)


def test_adafv_fixed_mixture_takes_half_from_each_ranking():
    """AdaFV eq. 3: top-K/2 by saliency and top-K/2 by T2I cosine (eq. 2)."""
    g = torch.Generator().manual_seed(0)
    text, image = torch.randn(5, 32, generator=g), torch.randn(100, 32, generator=g)
    saliency = torch.rand(100, generator=g)
    cos = adafv.cosine_scores(text, image)
    want = torch.nn.functional.normalize(text, dim=-1) @ torch.nn.functional.normalize(image, dim=-1).T
    torch.testing.assert_close(cos, want.max(0).values)
    kept = adafv.select(cos, saliency, 20, min_share=0.5)
    assert set(torch.topk(cos, 10).indices.tolist()) <= set(kept.tolist())
    assert set(torch.topk(saliency, 10).indices.tolist()) <= set(kept.tolist())
