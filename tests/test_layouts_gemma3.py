"""Gemma 3 (issue 18): pooled image grids, bidirectional attention within each image in the prefill,
sliding-window layers. Checked against the model's own projector (features that name their patch),
its own masks (keep-all and FastV against a hand-built forward on the model's rule, multi-image
samples included), and the family's documented arithmetic (Gemma 3 technical report, Sec. 2.1: a
896 x 896 SigLIP input, patch 14, condensed to 256 tokens per image; images attended bidirectionally)."""
import sys

import numpy as np
import pytest
import torch
import transformers

from reference import assert_rows_equal_eager

import vtanalysis as vta
from vtanalysis import prune
from vtanalysis.errors import UnsupportedModelError, VTAError
from vtanalysis.models import tiny
from vtanalysis.models.vlm import VLM
from vtanalysis.models.wordtok import word_tokenizer


def photo(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def vlm():
    return tiny.build("gemma3", seed=0, num_layers=4)


def test_columns_follow_the_models_pooling(vlm):
    """Patch features naming (row, col) through the model's projector (its RMS norm and projection made
    the identity): each column of the grid holds the average of its kernel x kernel patches."""
    batch = vlm.prepare([photo(40, 60)], ["what ?"])
    lay = batch.layouts[0]
    (grid,) = lay.grids
    proj = vlm.model.model.multi_modal_projector
    p, dv = proj.patches_per_image, vlm.config.vision_config.hidden_size
    r, c = torch.meshgrid(torch.arange(p).float(), torch.arange(p).float(), indexing="ij")
    named = torch.zeros(1, p * p, dv)
    named[0, :, 0], named[0, :, 1] = r.flatten(), c.flatten()
    with torch.no_grad():
        weight, norm = proj.mm_input_projection_weight.clone(), proj.mm_soft_emb_norm.forward
        proj.mm_input_projection_weight.copy_(torch.eye(dv, proj.mm_input_projection_weight.shape[1]))
        proj.mm_soft_emb_norm.forward = lambda x: x
        try:
            pooled = proj(named)[0]  # [tokens, D] in sequence order
        finally:
            proj.mm_input_projection_weight.copy_(weight)
            proj.mm_soft_emb_norm.forward = norm
    at = pooled[torch.argsort(torch.argsort(lay.image_positions))]  # what sits at each column
    k = proj.kernel_size
    i, j = torch.meshgrid(torch.arange(grid.shape[0]).float(), torch.arange(grid.shape[1]).float(), indexing="ij")
    torch.testing.assert_close(grid.to_map(at[:, 0]), i * k + (k - 1) / 2)
    torch.testing.assert_close(grid.to_map(at[:, 1]), j * k + (k - 1) / 2)


def test_engine_masks_follow_the_models_on_multi_image_samples(vlm, monkeypatch):
    """Two images in one sample are two bidirectional blocks (the first does not see the second), in a
    padded batch: the engine's own path at keep-all equals the unpruned model, and pruned runs with and
    without the KV cache agree."""
    batch = vlm.prepare([[photo(40, 60), photo(90, 50, 1)], photo(64, 64, 2)], ["two ?", "how many red circles ?"])
    blocks = vlm.adapter.attention_blocks(batch.model_inputs)
    assert sorted(blocks[0].unique().tolist()) == [-1, 0, 1] and sorted(blocks[1].unique().tolist()) == [-1, 0]
    base = prune.run(vlm, batch, "none", max_new_tokens=3)
    monkeypatch.setattr(sys.modules["vtanalysis.prune.run"], "keeps_everything", lambda keep, n: False)
    for method in ("fastv", "divprune"):
        res = prune.run(vlm, batch, method, 1.0, max_new_tokens=3)
        torch.testing.assert_close(res.logits, base.logits, atol=1e-5, rtol=0)
        assert torch.equal(res.token_ids, base.token_ids)
    monkeypatch.undo()
    cached = prune.run(vlm, batch, "fastv", 0.5, max_new_tokens=4)
    recomputed = prune.run(vlm, batch, "fastv", 0.5, max_new_tokens=4, use_cache=False)
    assert torch.equal(cached.token_ids, recomputed.token_ids)
    assert_rows_equal_eager(vlm, batch, vta.record_attention(vlm, batch))


def test_a_sequence_longer_than_the_sliding_window_is_refused_by_the_engine_not_the_collector():
    """Local layers attend within a window; past it the engine's causal masks would differ from the
    model's, so pruning refuses, while the collector (the model's own masks) stays exact."""
    small = tiny.build("gemma3", seed=0, num_layers=4)
    small.model.config.text_config.sliding_window = 12
    batch = small.prepare([photo(40, 60)], ["how many red circles are there ?"])
    assert batch.model_inputs["input_ids"].shape[1] > 12
    with pytest.raises(VTAError, match="12-token sliding window"):
        prune.run(small, batch, "fastv", 0.5)
    assert_rows_equal_eager(small, batch, vta.record_attention(small, batch))


def test_pan_and_scan_crops_are_refused(vlm):
    p = vlm.processor
    kept = p.images_kwargs
    p.images_kwargs = {**kept, "do_pan_and_scan": True, "pan_and_scan_min_crop_size": 8}
    try:
        with pytest.raises(UnsupportedModelError, match="do_pan_and_scan=False"):
            vlm.prepare([photo(40, 120)], ["what ?"])
    finally:
        p.images_kwargs = kept


def test_cls_methods_rank_by_the_attention_each_patch_receives_pooled_per_token(vlm):
    """No [CLS] in SigLIP: FasterVLM ranks by the attention each patch receives at the tower's last layer
    (VisPruner's SigLIP rule: mean over queries and heads), averaged over each token's pooled patches;
    VisionZip, which needs the token itself, is refused."""
    from vtanalysis.prune.vision import VisionCapture

    batch = vlm.prepare([photo(40, 60)], ["what ?"])
    tower = vlm.model.model.vision_tower
    vlm.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            att = tower(batch.model_inputs["pixel_values"], output_attentions=True).attentions[-1]
    finally:
        vlm.model.set_attn_implementation("sdpa")
    received = att.mean(-2).mean(1)  # [1, P^2]
    with VisionCapture(vlm) as capture, torch.no_grad():
        vlm.model(**batch.model_inputs)
    torch.testing.assert_close(capture.saliency, received, atol=1e-6, rtol=0)
    proj = vlm.model.model.multi_modal_projector
    p, k = proj.patches_per_image, proj.kernel_size
    per_token = received.view(p // k, k, p // k, k).mean((1, 3)).flatten()  # row-major tokens
    res = prune.run(vlm, batch, "fastervlm", 5, max_new_tokens=1)
    assert torch.equal(res.kept[0][0].cpu().sort().values, torch.topk(per_token, 5).indices.sort().values)
    with pytest.raises(UnsupportedModelError, match=r"no \[CLS\]"):
        prune.run(vlm, batch, "visionzip", 0.5)


def test_released_arithmetic():
    """The released vision settings (gemma-3-4b-it: SigLIP 896 px, patch 14, 64 x 64 patches;
    mm_tokens_per_image 256, Gemma3Config's default) with a Gemma3ImageProcessor at 896 px: any image
    is one 16 x 16 grid of 256 tokens, pooled 4 x 4."""
    tok = word_tokenizer(extra_special=["<start_of_turn>", "<end_of_turn>"], named_special=tiny.GEMMA3_NAMED)
    vision = transformers.SiglipVisionConfig(image_size=896, patch_size=14, vision_use_head=False)
    cfg = transformers.Gemma3Config(vision_config=vision.to_dict(), boi_token_index=tok.boi_token_id,
                                    eoi_token_index=tok.eoi_token_id, image_token_index=tok.image_token_id).to_dict()
    cfg["text_config"].update(vocab_size=len(tok), head_dim=16, query_pre_attn_scalar=16)
    config = transformers.AutoConfig.for_model(**tiny.scale_down_config(cfg))
    processor = transformers.Gemma3Processor(image_processor=transformers.Gemma3ImageProcessor(size={"height": 896, "width": 896}),
                                             tokenizer=tok, image_seq_length=256, chat_template=tiny.GEMMA3_TEMPLATE)
    torch.manual_seed(0)
    released = VLM(transformers.Gemma3ForConditionalGeneration(config), processor)
    for size in [(600, 800), (300, 1200)]:
        batch = released.prepare([photo(*size)], ["what is this ?"])
        assert [g.shape for g in batch.layouts[0].grids] == [(16, 16)] and batch.layouts[0].n_image_tokens == 256
    assert released.model.model.multi_modal_projector.kernel_size == 4
    out = released.model(**batch.model_inputs)  # the model takes this count: it is its own
    assert out.logits.shape[1] == batch.model_inputs["input_ids"].shape[1]
