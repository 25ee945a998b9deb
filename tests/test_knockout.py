"""Attention knockout (issue 39 part 4) and `ablate(how="mask")`: arXiv 2411.18620 blocks attention
edges (image -> question, image -> last, question -> last) in windows of layers. The knocked-out
layers get the model's own mask with the blocked pairs removed; every other layer is untouched."""
import pytest
import torch
import transformers
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from conftest import QUESTIONS
from test_causal import FAMILIES, same_size_images
from vtanalysis import VTAError, causal, prune
from vtanalysis.models import tiny


@pytest.mark.parametrize("family", FAMILIES + ["qwen3-vl"])
@pytest.mark.parametrize("layer", [0, 2])
def test_masking_tokens_from_layer_l_equals_dropping_them(family, layer):
    """With original positions a key nobody attends to weighs what an absent key does (2512.07580's
    removal, computed through the mask): the same logits and effects as the engine's drop."""
    vlm = tiny.build(family, seed=1, num_layers=4)
    batch = vlm.prepare(same_size_images(), [QUESTIONS[0], "what is the colour of the big thing in the middle ?"])
    ablated = [torch.arange(0, lay.n_image_tokens, 3 + b) for b, lay in enumerate(batch.layouts)]
    ref = causal.reference(vlm, batch, max_new_tokens=3)
    dropped = causal.ablate(vlm, batch, ablated, "drop", layer, ref=ref)
    masked = causal.ablate(vlm, batch, ablated, "mask", layer, ref=ref)
    assert torch.allclose(masked.logits, dropped.logits, atol=2e-5)
    assert torch.allclose(masked.logprob_drop, dropped.logprob_drop, atol=2e-5)
    assert (masked.kl > 0).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_no_edges_or_no_layers_is_bit_identical_to_the_plain_forward(family, images):
    vlm = tiny.build(family, seed=2, num_layers=3)
    batch = vlm.prepare(images[:2], QUESTIONS[:2])
    plain = prune.run(vlm, batch, "none", max_new_tokens=3)
    for edges, layers in [([], range(3)), ("image->last", [])]:
        result = causal.knockout(vlm, batch, edges, layers, max_new_tokens=3)
        assert torch.equal(result.logits, plain.logits)
        assert torch.equal(result.kl, torch.zeros(2)) and torch.equal(result.logprob_drop, torch.zeros(2))


@pytest.mark.parametrize("family", FAMILIES)
def test_blocking_image_to_text_everywhere_makes_the_answer_independent_of_the_image(family):
    """No text query reads an image token in any layer: two different images give the same logits."""
    vlm = tiny.build(family, seed=3, num_layers=3)
    batch = vlm.prepare(same_size_images(7), [QUESTIONS[0]] * 2)
    assert batch.layouts[0].n_image_tokens == batch.layouts[1].n_image_tokens
    plain = prune.run(vlm, batch, "none", max_new_tokens=2).logits
    assert not torch.allclose(plain[0], plain[1], atol=1e-4)  # the images do matter unblocked
    blocked = causal.knockout(vlm, batch, "image->text", range(3), max_new_tokens=2, answers=True)
    assert torch.allclose(blocked.logits[0], blocked.logits[1], atol=1e-5)
    assert blocked.answers[0] == blocked.answers[1]


KNOCKED = {}  # decoder layer's attention module -> [B, L, L] pairs the reference attention removes
TEXT = set()  # the decoder layers' attention modules (the vision tower's run as SDPA)


def reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Plain eager attention (GQA, softmax in float32), with the test's blocked pairs removed from
    the scores of the layers in KNOCKED: an independent path through transformers' attention interface."""
    if module not in TEXT:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scores = (query @ key.transpose(2, 3)) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    q, k = scores.shape[-2:]
    allowed = torch.ones(q, k, dtype=torch.bool).tril(k - q)[None, None]
    if attention_mask is not None:
        allowed = attention_mask if attention_mask.dtype == torch.bool else attention_mask > -1e30
    if module in KNOCKED and q > 1:
        allowed = allowed & ~KNOCKED[module][:, None]
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = torch.softmax(scores.float(), -1).nan_to_num(0.0).to(query.dtype) @ value  # padding rows: no key
    return out.transpose(1, 2).contiguous(), None


@pytest.mark.parametrize("family", ["llava", "qwen2-vl", "gemma3"])
@pytest.mark.parametrize("edge, window", [("image->last", [1, 2]), ("question->last", [0]),
                                          ("image->question", [2, 3]), ("image->text", [3])])
def test_a_window_knockout_equals_eager_attention_with_those_layers_edited(family, edge, window, images):
    """2411.18620's knockout in a window of layers, against eager attention whose scores are edited in
    those layers only (1e-5)."""
    vlm = tiny.build(family, seed=4, num_layers=4)
    batch = vlm.prepare(images[:2], QUESTIONS[:2])  # two sizes: padding
    got = causal.knockout(vlm, batch, edge, window, max_new_tokens=2).logits
    source, target = edge.split("->")
    length = batch.model_inputs["input_ids"].shape[1]
    sets = []
    for lay in batch.layouts:
        at = {"image": lay.image_positions, "question": lay.text_positions[:-1], "last": lay.text_positions[-1:],
              "text": lay.text_positions}
        pairs = torch.zeros(length, length, dtype=torch.bool)
        pairs[at[target][:, None], at[source][None, :]] = True
        sets.append(pairs)
    KNOCKED.clear()
    KNOCKED.update({vlm.decoder_layers[l].self_attn: torch.stack(sets) for l in window})
    TEXT.update(layer.self_attn for layer in vlm.decoder_layers)
    transformers.AttentionInterface.register("knockout_reference", reference_attention)
    AttentionMaskInterface.register("knockout_reference", sdpa_mask)  # the padding mask SDPA gets
    vlm.model.set_attn_implementation("knockout_reference")
    try:
        with torch.inference_mode():
            want = vlm.model(**batch.model_inputs).logits[:, -1]
    finally:
        vlm.model.set_attn_implementation("sdpa")
        KNOCKED.clear()
        TEXT.clear()
    assert torch.allclose(got, want.float(), atol=1e-5)


def test_an_object_to_question_edge_blocks_only_its_tokens(images):
    """Object tokens -> question (2411.18620's object-level knockout): an Edge of columns."""
    vlm = tiny.build("llava", seed=5, num_layers=3)
    batch = vlm.prepare(images[:1], QUESTIONS[:1])
    n = batch.layouts[0].n_image_tokens
    every = causal.knockout(vlm, batch, causal.Edge([torch.arange(n)], "question"), range(3))
    named = causal.knockout(vlm, batch, "image->question", range(3), ref=every.reference)
    part = causal.knockout(vlm, batch, causal.Edge([torch.arange(4)], "question"), range(3), ref=every.reference)
    assert torch.allclose(every.logits, named.logits, atol=1e-6)
    assert not torch.allclose(part.logits, every.logits, atol=1e-4)


@pytest.mark.parametrize("edges, layers, says", [
    ("image->answer", [0], "unknown edge"),
    ("image->last", [7], "knockout layer 7"),
    (causal.Edge([torch.tensor([999])], "last"), [0], "must lie in [0,"),
    (causal.Edge([torch.tensor([0]), torch.tensor([1])], "last"), [0], "one LongTensor of image-token columns per sample"),
    (3, [0], "an edge must be"),
])
def test_bad_knockouts_are_named_errors_and_leave_the_model_intact(edges, layers, says, images):
    vlm = tiny.build("llava", seed=6, num_layers=3)
    batch = vlm.prepare(images[:1], QUESTIONS[:1])
    before = prune.run(vlm, batch, "none", max_new_tokens=2).logits
    with pytest.raises(VTAError) as err:
        causal.knockout(vlm, batch, edges, layers)
    assert says in str(err.value)
    assert torch.equal(prune.run(vlm, batch, "none", max_new_tokens=2).logits, before)
