"""Recorded rows equal eager attention rows (issue: foundation, 'Done when' 1).

The reference is the same model run with eager attention and output_attentions=True; the
collector runs with SDPA and computes only the needed rows from post-RoPE queries and keys.
"""
import pytest
import torch

import vtanalysis as vta
from conftest import QUESTIONS

from reference import assert_rows_equal_eager, eager_attentions

TOL = 1e-5


@pytest.mark.parametrize("batch_size", [1, 3])
def test_rows_equal_eager(family_vlm, images, batch_size):
    vlm = family_vlm
    batch = vlm.prepare(images[:batch_size], QUESTIONS[:batch_size])
    assert vlm.model.config.text_config._attn_implementation == "sdpa"
    rec = vta.record_attention(vlm, batch)
    assert rec.layers == list(range(vlm.num_layers))
    assert_rows_equal_eager(vlm, batch, rec, atol=TOL)


def test_prompts_of_different_length_are_padded(family_vlm, images):
    batch = family_vlm.prepare(images, QUESTIONS)
    seq_lens = {int(m.sum()) for m in batch.model_inputs["attention_mask"]}
    assert len(seq_lens) > 1, "the batch must exercise padding"
    assert any(lay.first_position > 0 for lay in batch.layouts)


def test_per_head_rows_and_layer_subset(family_vlm, images):
    vlm = family_vlm
    batch = vlm.prepare(images[:2], QUESTIONS[:2])
    rec = vta.record_attention(vlm, batch, layers=[-1, 0], heads="all")
    ref = eager_attentions(vlm, batch)
    last = vlm.num_layers - 1
    assert rec.layers == [0, last]
    heads = vlm.model.config.text_config.num_attention_heads
    for b, lay in enumerate(batch.layouts):
        got = rec[b].text_to_image[rec[b].layer(last)]
        assert got.shape == (heads, lay.n_text, lay.n_image_tokens)
        want = ref[last][b][:, lay.text_positions][:, :, lay.image_positions]
        torch.testing.assert_close(got, want, atol=TOL, rtol=0)


def test_text_to_text_is_causal_and_rows_are_distributions(family_vlm, images):
    vlm = family_vlm
    batch = vlm.prepare(images[:1], QUESTIONS[:1])
    rec = vta.record_attention(vlm, batch)
    t2t = rec[0].text_to_text
    upper = torch.triu(torch.ones_like(t2t[0], dtype=torch.bool), diagonal=1)
    assert (t2t[:, upper] == 0).all(), "a text query cannot attend to later text"
    # image + text columns are a subset of all keys: their mass is at most 1
    assert (rec[0].text_to_image.sum(-1) + t2t.sum(-1) <= 1 + 1e-5).all()


def test_record_round_trips_through_safetensors(family_vlm, images, tmp_path):
    vlm = family_vlm
    batch = vlm.prepare(images[:2], QUESTIONS[:2])
    rec = vta.record_attention(vlm, batch, layers=[1])
    rec.save(tmp_path / "rec")
    back = vta.AttentionRecord.load(tmp_path / "rec")
    assert back.layers == [1] and len(back) == 2
    assert_rows_equal_eager(vlm, batch, back)  # also covers stopping the pass after layer 1
    for a, b in zip(rec, back):
        assert torch.equal(a.text_to_image, b.text_to_image) and torch.equal(a.text_to_text, b.text_to_text)
        assert torch.equal(a.layout.image_positions, b.layout.image_positions)
        assert a.layout.grids == b.layout.grids


def test_sdpa_output_is_unchanged_by_the_tap(family_vlm, images):
    """The tap observes; it must not change what the model computes."""
    vlm = family_vlm
    batch = vlm.prepare(images[:2], QUESTIONS[:2])
    with torch.no_grad():
        plain = vlm.model(**batch.model_inputs).logits
    seen = []
    from vtanalysis.collect import tap_attention
    with tap_attention({vlm.decoder_layers[0].self_attn: lambda *a: seen.append(1)}), torch.no_grad():
        tapped = vlm.model(**batch.model_inputs).logits
    assert seen == [1]
    assert torch.equal(plain, tapped)
