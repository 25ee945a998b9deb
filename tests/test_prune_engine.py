"""The pruning engine inside real inference (pruning issue, 'Done when' 1 and 3).

- keep = all tokens: every method's logits equal the unpruned logits (in-LLM and pre-LLM);
- in-LLM FastV equals a hand-built forward that drops tokens after layer K with original positions;
- 5 generated tokens with the KV cache equal those without it;
- a batch of 3 equals 3 single runs.
"""
import sys

import pytest
import torch

import vtanalysis as vta
from conftest import QUESTIONS
from reference import deepstack_features, lm_inputs, prefill_mask, rotary
from vtanalysis import prune
from vtanalysis.prune.vision import vision_refusal
from vtanalysis.models import tiny


@pytest.fixture(scope="module", params=tiny.FAMILIES)
def vlm4(request):
    return tiny.build(request.param, seed=1, num_layers=4)


def knobs_for(vlm, method, knobs):
    """Qwen2-VL: no [CLS] (skip those methods), and renumbering methods keep original M-RoPE positions."""
    spec = prune.get(method)
    if vision_refusal(vlm, spec.needs) is not None:
        pytest.skip("no vision [CLS] token in this family")
    if spec.positions == "renumber" and spec.where == "llm" and vlm.adapter.mrope:
        return {**knobs, "positions": "original"}
    return dict(knobs)


@pytest.mark.parametrize("method", prune.methods())
def test_keep_all_equals_unpruned(vlm4, images, method):
    """Fidelity issue 1: keep=1.0 with no knobs runs no stage at all, for every method."""
    knobs = knobs_for(vlm4, method, {})
    batch = vlm4.prepare(images, QUESTIONS)
    base = prune.run(vlm4, batch, "none", max_new_tokens=3)
    res = prune.run(vlm4, batch, method, 1.0, max_new_tokens=3, **knobs)
    assert res.stage_layers == []
    torch.testing.assert_close(res.logits, base.logits, atol=1e-5, rtol=0)
    assert torch.equal(res.token_ids, base.token_ids)
    assert res.flops_ratio == pytest.approx(1.0)
    assert res.image_tokens_per_layer == [lay.n_image_tokens for lay in batch.layouts]


@pytest.mark.parametrize("method,knobs", [
    ("fastv", {}), ("adaptprune", {}), ("random", {}), ("max-3x3", {}), ("pyramiddrop", dict(ratios=(1.0, 1.0, 1.0))),
    ("adaptinfer", dict(counts=[10**6, 10**6])), ("fitprune", {}), ("sparsevlm", dict(counts=[10**6] * 3)),
    ("fastervlm", {}), ("adafv", {}), ("adafv-fixed", {}), ("adafv-t2i", {}), ("visionzip", {}), ("divprune", {}), ("scope", {}), ("uniform", {}), ("dart", {}), ("vispruner", {}), ("pool", {})])
def test_stages_that_keep_every_token_equal_unpruned(vlm4, images, method, knobs, monkeypatch):
    """The engine's own path (gathers, masks, positions, merges), forced to run at keep=1.0
    (which `run` otherwise short-cuts to the unpruned model), changes nothing."""
    monkeypatch.setattr(sys.modules["vtanalysis.prune.run"], "keeps_everything", lambda keep, n: False)
    knobs = knobs_for(vlm4, method, knobs)
    batch = vlm4.prepare(images, QUESTIONS)
    base = prune.run(vlm4, batch, "none", max_new_tokens=3)
    res = prune.run(vlm4, batch, method, 1.0, max_new_tokens=3, **knobs)
    assert res.stage_layers, "the method must actually run its stages"
    torch.testing.assert_close(res.logits, base.logits, atol=1e-5, rtol=0)
    assert torch.equal(res.token_ids, base.token_ids)
    assert res.flops_ratio == pytest.approx(1.0)


@torch.no_grad()
def fastv_reference(vlm, batch, layer, keep):
    """Hand-built FastV: layers < K on all tokens; scores from layer K-1's eager attention weights;
    layers >= K on the kept tokens with their original rotary positions (batch of one, no padding)."""
    lm, h, pos = lm_inputs(vlm, batch)
    lay = batch.layouts[0]
    n = h.shape[1]
    mask = prefill_mask(vlm, batch)  # Gemma 3: images attend to themselves both ways
    deepstack = deepstack_features(vlm, batch)  # Qwen3-VL: added at the image tokens after the first layers
    image_sorted = lay.image_positions.sort().values
    causal = torch.full((n, n), torch.finfo(h.dtype).min).triu(1)[None, None] if mask is None else mask
    for l in range(layer):
        block = lm.layers[l]
        cos, sin = rotary(lm, h, pos, l)
        if l == layer - 1:
            vlm.model.set_attn_implementation("eager")
            _, weights = block.self_attn(hidden_states=block.input_layernorm(h), position_embeddings=(cos, sin),
                                         attention_mask=causal)
            vlm.model.set_attn_implementation("sdpa")
        h = block(h, attention_mask=mask, position_embeddings=(cos, sin), position_ids=pos)
        if l < len(deepstack):
            h[0, image_sorted] += deepstack[l]
    scores = weights[0, :, -1, lay.image_positions].mean(0)
    kept_cols = torch.topk(scores, keep).indices.sort().values
    kept_img = lay.image_positions[kept_cols]
    is_kept = torch.ones(n, dtype=torch.bool)
    is_kept[lay.image_positions] = False
    is_kept[kept_img] = True
    idx = is_kept.nonzero().flatten()
    h, mask = h[:, idx], prefill_mask(vlm, batch, idx)
    for l in range(layer, len(lm.layers)):
        cos, sin = rotary(lm, h, pos, l)
        h = lm.layers[l](h, attention_mask=mask, position_embeddings=(cos[:, idx], sin[:, idx]))
        if l < len(deepstack):  # only the kept image tokens get their features
            kept_sorted = kept_img.sort()
            h[0, torch.searchsorted(idx, kept_sorted.values)] += deepstack[l][torch.searchsorted(image_sorted, kept_sorted.values)]
    logits = vlm.model.lm_head(lm.norm(h))[:, -1]
    return logits, kept_cols


@pytest.mark.parametrize("layer", [1, 2])
def test_fastv_equals_hand_built_reference(vlm4, images, layer):
    batch = vlm4.prepare(images[2:], QUESTIONS[2:])
    n = batch.layouts[0].n_image_tokens
    keep = max(1, n // 4)
    want_logits, want_cols = fastv_reference(vlm4, batch, layer, keep)
    res = prune.run(vlm4, batch, "fastv", keep, layer=layer, max_new_tokens=1)
    assert torch.equal(res.kept[0][0], want_cols)
    torch.testing.assert_close(res.logits, want_logits, atol=1e-5, rtol=0)
    assert res.kept_counts == [[keep]] and res.flops_ratio < 1.0


@pytest.mark.parametrize("method,knobs", [("fastv", {"keep": 0.25}), ("adaptprune", {"keep": 0.25}),
                                          ("pyramiddrop", {"keep": 0.5}), ("adaptinfer", {"keep": 0.3}),
                                          ("adafv", {"keep": 0.25}), ("visionzip", {"keep": 0.3}),
                                          ("adafv-t2i", {"keep": 0.25}), ("divprune", {"keep": 0.25}),
                                          ("scope", {"keep": 0.25}), ("uniform", {"keep": 0.25}),
                                          ("dart", {"keep": 0.25}), ("vispruner", {"keep": 0.25}),
                                          ("pool", {"keep": 0.25})])
def test_generation_with_kv_cache_equals_without(vlm4, images, method, knobs):
    knobs = knobs_for(vlm4, method, knobs)
    batch = vlm4.prepare(images, QUESTIONS)
    cached = prune.run(vlm4, batch, method, max_new_tokens=5, **knobs)
    recomputed = prune.run(vlm4, batch, method, max_new_tokens=5, use_cache=False, **knobs)
    assert cached.token_ids.shape[1] == 5
    assert torch.equal(cached.token_ids, recomputed.token_ids)
    for a, b in zip(cached.kept, recomputed.kept):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("method", ["fastv", "adaptprune", "adaptinfer", "adafv", "visionzip", "adafv-t2i", "divprune",
                                    "scope", "uniform", "dart", "vispruner", "pool"])
def test_batch_of_three_equals_three_single_runs(vlm4, images, method):
    knobs = knobs_for(vlm4, method, {})
    batch = vlm4.prepare(images, QUESTIONS)
    together = prune.run(vlm4, batch, method, 0.3, max_new_tokens=4, **knobs)
    for b in range(3):
        alone = prune.run(vlm4, vlm4.prepare(images[b:b + 1], QUESTIONS[b:b + 1]), method, 0.3, max_new_tokens=4,
                          **knobs)
        for stage in range(len(together.kept)):
            assert torch.equal(together.kept[stage][b], alone.kept[stage][0])
        torch.testing.assert_close(together.logits[b], alone.logits[0], atol=1e-4, rtol=0)
        assert together.answers[b] == alone.answers[0]


def test_renumbered_positions_change_the_output_only_when_tokens_are_dropped(images):
    vlm = tiny.build("llava", seed=2, num_layers=4)
    batch = vlm.prepare(images[:1], QUESTIONS[:1])
    orig = prune.run(vlm, batch, "fastv", 0.25, max_new_tokens=1)
    renum = prune.run(vlm, batch, "fastv", 0.25, max_new_tokens=1, positions="renumber")
    assert torch.equal(orig.kept[0][0], renum.kept[0][0])
    assert not torch.allclose(orig.logits, renum.logits)


def test_kept_grid_coordinates_and_multi_stage_nesting(images):
    vlm = tiny.build("llava", seed=3, num_layers=8)
    batch = vlm.prepare(images[:2], QUESTIONS[:2])
    res = prune.run(vlm, batch, "pyramiddrop", ratios=(0.5, 0.25, 0.125), max_new_tokens=1)
    assert len(res.stage_layers) == 3 and res.kept_counts == [[32, 32], [16, 16], [8, 8]]
    for b in range(2):
        assert set(res.kept[1][b].tolist()) <= set(res.kept[0][b].tolist())
        assert set(res.kept[2][b].tolist()) <= set(res.kept[1][b].tolist())
        (grid,) = batch.layouts[b].grids
        for (gi, r, c), col in zip(res.kept_grid[0][b], res.kept[0][b].tolist()):
            assert gi == 0 and r * grid.shape[1] + c == col


def test_vtw_withdraws_every_image_token(images):
    vlm = tiny.build("llava", seed=3, num_layers=4)
    batch = vlm.prepare(images[:1], QUESTIONS[:1])
    res = prune.run(vlm, batch, "vtw", layer=2, max_new_tokens=2)
    assert res.kept_counts == [[0]] and res.kept[0][0].numel() == 0


def test_select_returns_the_kept_columns(images):
    vlm = tiny.build("llava", seed=3, num_layers=4)
    batch = vlm.prepare(images[:1], QUESTIONS[:1])
    sel = prune.select(vlm, batch, "fastv", keep=10)
    assert len(sel) == 1 and sel[0][0].numel() == 10


def test_errors_name_the_problem(images):
    vlm = tiny.build("llava", seed=3, num_layers=4)
    batch = vlm.prepare(images[:1], QUESTIONS[:1])
    with pytest.raises(vta.VTAError, match=r"unknown pruning method 'fastvv'.*adaptinfer.*fastv"):
        prune.run(vlm, batch, "fastvv")
    with pytest.raises(vta.VTAError, match="larger than the image"):
        prune.run(vlm, batch, "fastv", keep=10_000)
    with pytest.raises(vta.VTAError, match="outside"):
        prune.run(vlm, batch, "fastv", keep=0.0)
    with pytest.raises(vta.LayerError, match="pruning layer 9 is out of range"):
        prune.run(vlm, batch, "fastv", keep=0.5, layer=9)
    qwen = tiny.build("qwen2-vl", num_layers=4)
    qwen_batch = qwen.prepare(images[:1], QUESTIONS[:1])
    with pytest.raises(vta.VTAError, match="M-RoPE"):
        prune.run(qwen, qwen_batch, "fastv", 0.5, positions="renumber")
    with pytest.raises(vta.VTAError, match="M-RoPE"):
        prune.run(qwen, qwen_batch, "adaptinfer", 0.5, positions="renumber")
    for method in ("fastervlm", "adafv", "visionzip"):
        with pytest.raises(vta.UnsupportedModelError, match=rf"'{method}' needs the vision tower's \[CLS\].*no \[CLS\]"):
            prune.run(qwen, qwen_batch, method, 0.5)


@pytest.mark.parametrize("method", ["adaptinfer", "pyramiddrop", "sparsevlm"])
def test_renumbering_methods_keep_mrope_positions_by_default(images, method):
    """On Qwen2-VL, in-LLM methods that renumber elsewhere run with the grid (M-RoPE) positions kept:
    the default equals positions='original' (renumbering M-RoPE ids is undefined)."""
    qwen = tiny.build("qwen2-vl", num_layers=4)
    batch = qwen.prepare(images[:1], QUESTIONS[:1])
    default = prune.run(qwen, batch, method, 0.25, max_new_tokens=2)
    original = prune.run(qwen, batch, method, 0.25, max_new_tokens=2, positions="original")
    assert torch.equal(default.token_ids, original.token_ids)
    torch.testing.assert_close(default.logits, original.logits, rtol=0, atol=0)


@torch.no_grad()
def layer_qk(block, h, cos, sin):
    """A Llama decoder layer's own queries and keys on the states h entering it: input norm, q/k
    projections, RoPE, keys repeated per query head. [1, H, L, d] each."""
    import transformers.models.llama.modeling_llama as llama

    attn = block.self_attn
    normed = block.input_layernorm(h)
    q = attn.q_proj(normed).view(1, h.shape[1], -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(normed).view(1, h.shape[1], -1, attn.head_dim).transpose(1, 2)
    q, k = llama.apply_rotary_pos_emb(q, k, cos, sin)
    return q, k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)


def kept_sequence(h, image, top):
    """Sequence indices that remain when only the image tokens image[top] are kept (order kept)."""
    is_kept = torch.ones(h.shape[1], dtype=torch.bool)
    is_kept[image] = False
    is_kept[image[top]] = True
    return is_kept.nonzero().flatten()


@torch.no_grad()
def pyramiddrop_reference(vlm, batch, stage_layers, ratios):
    """PyramidDrop as Cooperx521/PyramidDrop's `pdrop_rank_drop` (modeling_llama_pdrop.py) does it, batch of
    one: before stage layer K, layer K's input norm, q/k projections and RoPE on the current sequence;
    the last instruction token's softmax over all keys, head-mean, over the image tokens; keep the top
    int(n * ratio) (ratio of the ORIGINAL image count); positions renumbered 0..L'-1 afterwards."""
    lm, h, _ = lm_inputs(vlm, batch)
    lay = batch.layouts[0]
    n = lay.n_image_tokens
    image = lay.image_positions.clone()  # current positions of the image tokens, in column order
    columns = torch.arange(n)
    kept_per_stage = []
    for l, block in enumerate(lm.layers):
        pos = torch.arange(h.shape[1])[None]
        cos, sin = lm.rotary_emb(h, position_ids=pos)
        if l in stage_layers:
            q, k = layer_qk(block, h, cos, sin)
            weights = torch.softmax(q[0, :, -1:] @ k[0].transpose(1, 2) * block.self_attn.scaling, dim=-1)  # [H, 1, L]
            scores = weights.mean(0)[0, image]
            keep = int(n * ratios[stage_layers.index(l)])
            top = torch.topk(scores, keep).indices.sort().values
            idx = kept_sequence(h, image, top)
            h, columns, image = h[:, idx], columns[top], torch.searchsorted(idx, image[top])
            kept_per_stage.append(columns.sort().values)
            pos = torch.arange(h.shape[1])[None]
            cos, sin = lm.rotary_emb(h, position_ids=pos)
        h = block(h, attention_mask=None, position_embeddings=(cos, sin), position_ids=pos)
    return vlm.model.lm_head(lm.norm(h))[:, -1], kept_per_stage


def test_pyramiddrop_equals_the_authors_rank_and_drop(images):
    vlm = tiny.build("llava", seed=5, num_layers=8)
    batch = vlm.prepare(images[:1], QUESTIONS[2:3])
    ratios = (0.5, 0.25, 0.125)
    res = prune.run(vlm, batch, "pyramiddrop", ratios=ratios, max_new_tokens=1)
    want_logits, want_kept = pyramiddrop_reference(vlm, batch, res.stage_layers, ratios)
    assert res.stage_layers == [2, 4, 6]
    for got, want in zip(res.kept, want_kept):
        assert torch.equal(got[0].sort().values, want)
    torch.testing.assert_close(res.logits, want_logits, atol=1e-5, rtol=0)


@torch.no_grad()
def sparsevlm_reference(vlm, batch, stage_layers, counts):
    """SparseVLM (prune only) as Gumpest/SparseVLMs does it, batch of one: raters chosen once from the
    input embeddings (`LlamaDynamicvitModel.forward`: softmax over text of v.t^T, mean over image tokens,
    text tokens above the mean); at each scoring layer (the layer before a stage) its own softmax
    attention over all keys, head-mean, the raters' rows averaged over the current image tokens
    (`attn_postprocess_topk`); the layer's output keeps the top-k; positions renumbered 0..L'-1."""
    lm, h, _ = lm_inputs(vlm, batch)
    lay = batch.layouts[0]
    v_t, t_t = h[:, lay.image_positions], h[:, lay.text_positions]
    m_v_t = (v_t @ t_t.transpose(1, 2)).softmax(2).mean(1)
    raters = torch.where(m_v_t[0] > m_v_t.mean())[0]
    image = lay.image_positions.clone()
    text = lay.text_positions.clone()
    columns = torch.arange(lay.n_image_tokens)
    kept_per_stage = []
    for l, block in enumerate(lm.layers):
        pos = torch.arange(h.shape[1])[None]
        cos, sin = lm.rotary_emb(h, position_ids=pos)
        if l + 1 in stage_layers:
            q, k = layer_qk(block, h, cos, sin)
            logits = q[0] @ k[0].transpose(1, 2) * block.self_attn.scaling
            causal = torch.ones(h.shape[1], h.shape[1], dtype=torch.bool).tril()
            probs = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1).mean(0)  # [L, L]
            scores = probs[text[raters]][:, image].mean(0)
        h = block(h, attention_mask=None, position_embeddings=(cos, sin), position_ids=pos)
        if l + 1 in stage_layers:
            top = torch.topk(scores, counts[stage_layers.index(l + 1)]).indices.sort().values
            idx = kept_sequence(h, image, top)
            h, columns, image, text = h[:, idx], columns[top], torch.searchsorted(idx, image[top]), torch.searchsorted(idx, text)
            kept_per_stage.append(columns.sort().values)
    return vlm.model.lm_head(lm.norm(h))[:, -1], kept_per_stage


def test_sparsevlm_equals_the_authors_raters_and_scores(images):
    vlm = tiny.build("llava", seed=6, num_layers=8)
    batch = vlm.prepare(images[1:2], QUESTIONS[1:2])
    n = batch.layouts[0].n_image_tokens
    counts = [n // 2, n // 4, n // 8]
    res = prune.run(vlm, batch, "sparsevlm", counts=counts, max_new_tokens=1)
    assert res.stage_layers == [1, 2, 4]  # 3 / 7 / 16 of 32 scaled to 8 layers
    want_logits, want_kept = sparsevlm_reference(vlm, batch, res.stage_layers, counts)
    for got, want in zip(res.kept, want_kept):
        assert torch.equal(got[0].sort().values, want)
    torch.testing.assert_close(res.logits, want_logits, atol=1e-5, rtol=0)
