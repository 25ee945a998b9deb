"""Pre-LLM pruning (pruning issue): FasterVLM, AdaFV, VisionZip.

- [CLS] saliency read through the SDPA tap equals the eager vision attentions (METHODS.md: layer
  -2, head-mean) and lands on the right layout columns, tiles and newlines included (LLaVA-NeXT);
- FasterVLM and VisionZip runs equal hand-built forwards of the shortened input sequence
  (VisionZip: contextual tokens = projector(mean of the group's vision features));
- VisionZip's and AdaFV's pure selection functions keep their budgets and rules.
"""
import pytest
import torch

from conftest import QUESTIONS
from reference import lm_inputs
from vtanalysis import prune
from vtanalysis.models import tiny
from vtanalysis.prune import adafv, visionzip
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


def test_visionzip_equals_merging_before_the_projector(llava, images):
    batch = llava.prepare(images[1:2], QUESTIONS[1:2])
    keep = 16
    cfg = llava.config
    out = eager_vision(llava, batch.model_inputs["pixel_values"])
    saliency = out.attentions[cfg.vision_feature_layer][0, :, 0, 1:].mean(0)
    layer_idx = cfg.vision_config.num_hidden_layers + cfg.vision_feature_layer
    attn = llava.model.model.vision_tower.encoder.layers[layer_idx]
    with torch.no_grad():
        k = attn.self_attn.k_proj(attn.layer_norm1(out.hidden_states[layer_idx]))[0, 1:]
    keys = k.view(k.shape[0], cfg.vision_config.num_attention_heads, -1).mean(1)
    kept, owner = visionzip.select(saliency, keys, keep)
    assert (owner >= 0).all() and len(kept) == keep
    features = out.hidden_states[cfg.vision_feature_layer][0, 1:]
    with torch.no_grad():
        embeds = llava.model.model.multi_modal_projector(visionzip.merge(features, owner, kept))
    want = short_sequence_logits(llava, batch, embeds, kept)
    res = prune.run(llava, batch, "visionzip", keep, max_new_tokens=1)
    assert torch.equal(res.kept[0][0], kept)
    torch.testing.assert_close(res.logits, want, atol=1e-5, rtol=0)
    fastervlm = prune.run(llava, batch, "fastervlm", keep, max_new_tokens=1)
    assert not torch.allclose(fastervlm.logits, res.logits, atol=1e-4)  # the merge changed the input


def test_next_pre_llm_methods_keep_newlines_first(images):
    vlm = tiny.build("llava-next", seed=2, num_layers=4)
    batch = vlm.prepare(images[:1], QUESTIONS[:1])
    lay = batch.layouts[0]
    n_newlines = len(lay.newline_columns)
    for method in ("fastervlm", "adafv", "visionzip"):
        kept = prune.select(method, vlm, batch, keep=n_newlines + 5)[0][0]
        assert set(lay.newline_columns) <= set(kept.tolist()) and len(kept) == n_newlines + 5


# -- pure selection functions ----------------------------------------------------------------------
@pytest.mark.parametrize("keep", [1, 8, 64, 100])
def test_visionzip_select_budget_dominant_and_groups(keep):
    g = torch.Generator().manual_seed(keep)
    n = 144
    saliency, keys = torch.rand(n, generator=g), torch.randn(n, 16, generator=g)
    kept, owner = visionzip.select(saliency, keys, keep)
    n_dom, n_ctx = visionzip.split(keep)
    assert len(kept) == keep == n_dom + n_ctx and kept.unique().numel() == keep
    assert torch.equal(kept, kept.sort().values)
    dominant = torch.topk(saliency, n_dom).indices
    assert set(dominant.tolist()) <= set(kept.tolist())
    assert set(owner[owner >= 0].tolist()) <= set(kept.tolist())
    assert torch.equal(owner[kept], kept)  # kept tokens own themselves
    if n_ctx:
        assert (owner >= 0).all()  # every token ends up in some kept token
        targets = sorted(set(kept.tolist()) - set(dominant.tolist()))
        rest = [j for j in range(n) if j not in set(dominant.tolist())]
        others = [j for j in rest if j not in targets]
        sim = torch.nn.functional.normalize(keys, dim=-1)
        for j in others[:10]:  # joined the most similar target
            best = max(targets, key=lambda t: float(sim[j] @ sim[t]))
            assert int(owner[j]) == best


def test_visionzip_default_split_is_the_authors():
    assert [visionzip.split(k) for k in (64, 128, 192)] == [(54, 10), (108, 20), (162, 30)]


def test_visionzip_merge_is_the_group_mean():
    features = torch.arange(12.0).view(6, 2)
    owner = torch.tensor([0, 0, 2, 2, 2, -1])
    merged = visionzip.merge(features, owner, torch.tensor([0, 2]))
    torch.testing.assert_close(merged, torch.stack([features[:2].mean(0), features[2:5].mean(0)]))


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
