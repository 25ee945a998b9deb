"""Qwen3-VL (issue 18): DeepStack features follow the kept tokens, interleaved M-RoPE positions stay
the model's, and the released arithmetic (Qwen3-VL model card / processor config: patch 16, 2 x 2
merge, so one LLM token per 32 x 32 px of the resized image; DeepStack from vision layers 8, 16, 24
into the first three decoder layers)."""
import numpy as np
import pytest
import torch
import transformers

from reference import assert_rows_equal_eager, deepstack_features, lm_inputs

import vtanalysis as vta
from vtanalysis import prune
from vtanalysis.models import tiny
from vtanalysis.models.vlm import VLM
from vtanalysis.models.wordtok import word_tokenizer
from vtanalysis.prune.methods.baselines import lattice_shape


def photo(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def vlm():
    return tiny.build("qwen3-vl", seed=2, num_layers=4)


def pooled_by_block(values, grid_shape, kept_columns, k):
    """`pool`'s rule by hand: each kept token (a lattice point, at row floor((i + 1/2) h / r), column
    floor((j + 1/2) w / c)) carries the adaptive-average-pooling mean of block (i, j). values [h w, D]."""
    h, w = grid_shape
    r, c = lattice_shape(h, w, k)
    means = torch.nn.functional.adaptive_avg_pool2d(values.T.reshape(1, -1, h, w), (r, c))[0]  # [D, r, c]
    row_block = {int((i + 0.5) * h / r): i for i in range(r)}
    col_block = {int((j + 0.5) * w / c): j for j in range(c)}
    out = values.clone()
    for col in kept_columns.tolist():
        out[col] = means[:, row_block[col // w], col_block[col % w]]
    return out


@torch.no_grad()
def shortened_forward(vlm, batch, kept_columns, pooled=False):
    """Hand-built pre-LLM pruning, batch of one: every layer on the text and the kept image tokens with
    their original M-RoPE positions, each kept token getting its own DeepStack rows after the first layers
    (`pooled`: embeddings and DeepStack rows both replaced by their block means first)."""
    lm, h, pos = lm_inputs(vlm, batch)
    lay = batch.layouts[0]
    features = deepstack_features(vlm, batch)
    if pooled:
        (grid,), k = lay.grids, len(kept_columns)
        h[0, lay.image_positions] = pooled_by_block(h[0, lay.image_positions], grid.shape, kept_columns, k)
        features = [pooled_by_block(f, grid.shape, kept_columns, k) for f in features]
    assert len(features) == len(vlm.config.vision_config.deepstack_visual_indexes) > 0
    image_sorted = lay.image_positions.sort().values
    kept = lay.image_positions[kept_columns].sort().values
    is_kept = torch.ones(h.shape[1], dtype=torch.bool)
    is_kept[lay.image_positions] = False
    is_kept[kept] = True
    idx = is_kept.nonzero().flatten()
    rope_pos = pos[1:] if pos.shape[0] == 4 else pos  # [text, t, h, w] or [t, h, w]
    cos, sin = lm.rotary_emb(h, position_ids=rope_pos)
    h, cos, sin = h[:, idx], cos[:, idx], sin[:, idx]
    where, rows = torch.searchsorted(idx, kept), torch.searchsorted(image_sorted, kept)
    for l, block in enumerate(lm.layers):
        h = block(h, attention_mask=None, position_embeddings=(cos, sin))
        if l < len(features):
            h[0, where] += features[l][rows]
    return vlm.model.lm_head(lm.norm(h))[:, -1]


@pytest.mark.parametrize("method", ["divprune", "uniform", "adafv-t2i", "pool"])
def test_pre_llm_pruning_adds_deepstack_to_the_kept_tokens_only(vlm, method):
    batch = vlm.prepare([photo(90, 120)], ["how many red circles are there ?"])
    res = prune.run(vlm, batch, method, 0.5, max_new_tokens=1)
    assert res.stage_layers == [0] and 0 < res.kept_counts[0][0] < batch.layouts[0].n_image_tokens
    want = shortened_forward(vlm, batch, res.kept[0][0].cpu().sort().values, pooled=method == "pool")
    torch.testing.assert_close(res.logits, want, atol=1e-5, rtol=0)


def test_deepstack_with_padding_cache_and_multi_image_samples(vlm):
    batch = vlm.prepare([[photo(90, 120), photo(64, 64, 1)], photo(70, 50, 2)], ["two ?", "how many red circles ?"])
    for method, knobs in [("fastv", {"layer": 1}), ("divprune", {})]:
        cached = prune.run(vlm, batch, method, 0.5, max_new_tokens=4, **knobs)
        recomputed = prune.run(vlm, batch, method, 0.5, max_new_tokens=4, use_cache=False, **knobs)
        assert torch.equal(cached.token_ids, recomputed.token_ids)
        for b in range(2):  # a batch equals its samples run alone: DeepStack rows follow each sample
            alone = prune.run(vlm, vlm.prepare([batch_images(b)], [["two ?", "how many red circles ?"][b]]), method,
                              0.5, max_new_tokens=1, **knobs)
            torch.testing.assert_close(cached.logits[b], alone.logits[0], atol=1e-4, rtol=0)
    assert_rows_equal_eager(vlm, batch, vta.record_attention(vlm, batch))


def batch_images(b):
    return [[photo(90, 120), photo(64, 64, 1)], photo(70, 50, 2)][b]


def test_released_arithmetic():
    """A scaled-down model on the released vision settings (patch 16, merge 2, temporal patch 2) and
    the released image-processor limits (65,536 .. 16,777,216 pixels): 640 x 480 px is resized to
    multiples of 32 px, 20 x 15 merged tokens = 300, in one row-major grid."""
    tok = word_tokenizer(extra_special=["<image>"] + tiny.QWEN_SPECIAL)
    ids = {t: tok.convert_tokens_to_ids(t) for t in tiny.QWEN_SPECIAL}
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0,
                                                                     "mrope_section": tiny.mrope_section(16),
                                                                     "mrope_interleaved": True})
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                  deepstack_visual_indexes=[0, 1])
    config = transformers.Qwen3VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                                        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                                        vision_end_token_id=ids["<|vision_end|>"])
    assert (config.vision_config.patch_size, config.vision_config.spatial_merge_size) == (16, 2)
    image_processor = transformers.Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2,
                                                         min_pixels=65_536, max_pixels=16_777_216)
    processor = transformers.Qwen3VLProcessor(image_processor=image_processor, tokenizer=tok,
                                              video_processor=transformers.Qwen3VLVideoProcessor(),
                                              chat_template=tiny.QWEN_TEMPLATE)
    torch.manual_seed(0)
    released = VLM(transformers.Qwen3VLForConditionalGeneration(config), processor)
    batch = released.prepare([photo(480, 640)], ["what is this ?"])
    assert [g.shape for g in batch.layouts[0].grids] == [(15, 20)] and batch.layouts[0].n_image_tokens == 300
    res = prune.run(released, batch, "fastv", 0.25, layer=1, max_new_tokens=1)  # DeepStack past the stage
    assert res.kept_counts == [[75]]
