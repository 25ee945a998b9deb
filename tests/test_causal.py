"""Causal ablations (issue 39, part 1): `causal.ablate` removes or replaces image tokens with the
semantics it documents. Dropping a set from layer l is the pruning engine keeping the complement
from l (arXiv 2512.07580's removal); zero / mean replace the LLM input embeddings (arXiv
2410.07149's mean ablation); an empty set is no change; a batch equals its samples one by one."""
import pytest
import torch

from conftest import QUESTIONS
from vtanalysis import VTAError, causal, prune
from vtanalysis.models import tiny

FAMILIES = ["llava", "llava-next", "qwen2-vl", "gemma3"]


def same_size_images(rng_seed: int = 0, n: int = 2):
    g = torch.Generator().manual_seed(rng_seed)
    return [torch.randint(0, 255, (48, 48, 3), generator=g, dtype=torch.uint8).numpy() for _ in range(n)]


def complement_method(keep: list[torch.Tensor], where: str):
    """A method that keeps, per sample, the given indices of the image tokens (a test's pruning)."""
    def choose(inputs, k, stage):
        return keep[inputs.sample].to(inputs.columns.device)
    plan = prune.plans.single_stage(1) if where == "llm" else prune.plans.pre_stage()
    return prune.Method(name="complement-test", summary="test", where=where, needs=(), choose=choose, plan=plan)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layer", [0, 2])
def test_drop_from_layer_l_equals_pruning_that_keeps_the_complement(family, layer):
    """arXiv 2512.07580: tokens removed from layer l on; the same logits as the engine keeping the rest."""
    if layer == 0 and family != "llava":
        pytest.skip("the pre-LLM comparison method budgets per crop: LLaVA-1.5 has one crop per image")
    vlm = tiny.build(family, seed=1, num_layers=4)
    batch = vlm.prepare(same_size_images(), QUESTIONS[:2])
    n = batch.layouts[0].n_image_tokens
    assert all(lay.n_image_tokens == n for lay in batch.layouts)
    ablated = [torch.arange(0, n - 1, 3), torch.arange(1, n, 3)]  # the same count in both samples
    keep = [torch.tensor([c for c in range(n) if c not in set(a.tolist())]) for a in ablated]
    result = causal.ablate(vlm, batch, ablated, "drop", layer, max_new_tokens=3)
    prune.register(complement_method(keep, "llm" if layer else "pre"))
    try:
        knobs = {"layer": layer} if layer else {}
        pruned = prune.run(vlm, batch, "complement-test", len(keep[0]), forced_ids=result.reference.ids,
                           positions="original", **knobs)
    finally:
        prune.registry._REGISTRY.pop("complement-test")
    assert [k.tolist() for k in pruned.kept[0]] == [k.tolist() for k in keep]
    assert torch.allclose(result.logits, pruned.step_logits[:, 0], atol=1e-5)
    assert (result.kl > 0).all()


@pytest.mark.parametrize("how, layer", [("drop", 0), ("drop", 2), ("zero", 0), ("mean", 0)])
def test_an_empty_set_changes_nothing(how, layer, images):
    vlm = tiny.build("llava", seed=2, num_layers=4)
    batch = vlm.prepare(images[:2], QUESTIONS[:2])
    result = causal.ablate(vlm, batch, [[], []], how, layer, max_new_tokens=3)
    assert torch.equal(result.kl, torch.zeros(2)) and torch.equal(result.logprob_drop, torch.zeros(2))


def language_model_inputs(vlm, batch) -> torch.Tensor:
    """The LLM input embeddings of the unablated prefill (captured from the language model's call)."""
    seen = []
    lm = vlm.adapter.language_model(vlm.model)
    handle = lm.register_forward_pre_hook(lambda m, a, k: seen.append(k["inputs_embeds"].clone()), with_kwargs=True)
    try:
        with torch.no_grad():  # not inference mode: the test edits the captured tensor
            vlm.model(**batch.model_inputs)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("how", ["zero", "mean"])
def test_zero_and_mean_replace_the_input_embeddings_of_the_ablated_tokens(how, images):
    """arXiv 2410.07149's mean ablation (and zeroing): the LLM sees the ablated tokens' embeddings
    replaced by the mean of the sample's image embeddings (or zeros), everything else unchanged."""
    vlm = tiny.build("llava", seed=3, num_layers=4)
    batch = vlm.prepare(images[:2], QUESTIONS[:2])
    ablated = [torch.tensor([0, 4, 9]), torch.tensor([2, 3])]
    result = causal.ablate(vlm, batch, ablated, how, max_new_tokens=2)
    embeds = language_model_inputs(vlm, batch)
    for b, (cols, lay) in enumerate(zip(ablated, batch.layouts)):
        value = embeds[b, lay.image_positions].mean(0) if how == "mean" else 0.0
        embeds[b, lay.image_positions[cols]] = value
    with torch.inference_mode():
        want = vlm.model(inputs_embeds=embeds, attention_mask=batch.model_inputs["attention_mask"]).logits[:, -1]
    assert torch.allclose(result.logits, want.float(), atol=1e-5)


def test_a_batch_equals_its_samples_one_by_one(images):
    vlm = tiny.build("llava-next", seed=4, num_layers=4)
    batch = vlm.prepare(images[:2], QUESTIONS[:2])  # different sizes: different token counts, padding
    ablated = [torch.arange(0, batch.layouts[0].n_image_tokens, 2), torch.tensor([0, 1, 2])]
    both = causal.ablate(vlm, batch, ablated, "drop", 2, max_new_tokens=3)
    for b in range(2):
        one = causal.ablate(vlm, vlm.prepare(images[b:b + 1], QUESTIONS[b:b + 1]), [ablated[b]], "drop", 2,
                            max_new_tokens=3)
        assert one.reference.answers == [both.reference.answers[b]]
        assert torch.allclose(one.kl, both.kl[b:b + 1], atol=1e-5, rtol=1e-4)
        assert torch.allclose(one.logprob_drop, both.logprob_drop[b:b + 1], atol=1e-4)


def test_the_reference_is_the_greedy_answer_and_its_teacher_forced_likelihood(images):
    vlm = tiny.build("llava", seed=5, num_layers=3)
    batch = vlm.prepare(images[:2], QUESTIONS[:2])
    ref = causal.reference(vlm, batch, max_new_tokens=4)
    plain = prune.run(vlm, batch, "none", max_new_tokens=4)
    assert torch.equal(ref.ids, plain.token_ids) and ref.answers == plain.answers
    forced = prune.run(vlm, batch, "none", forced_ids=ref.ids)
    logp = torch.log_softmax(forced.step_logits, -1)
    want = torch.stack([sum(logp[b, t, ref.ids[b, t]] for t in range(ref.ids.shape[1]) if ref.mask[b, t])
                        for b in range(2)])
    assert torch.allclose(ref.logprob, want, atol=1e-5)
    target = causal.reference(vlm, batch, target=["red", "two circles"])
    assert target.mask.sum(1).tolist() == [len(vlm.processor.tokenizer(t, add_special_tokens=False)["input_ids"])
                                           for t in ["red", "two circles"]]


@pytest.mark.parametrize("tokens, how, layer, says", [
    ([[0, 999]], "drop", 0, "must lie in [0,"),
    ([[1, 1]], "drop", 0, "listed twice"),
    ([[0]], "shuffle", 0, "how='shuffle'"),
    ([[0]], "zero", 2, "use layer=0"),
    ([[0]], "drop", 99, "layer"),
    ([[0], [1]], "drop", 0, "give one set of image-token columns per sample"),
])
def test_bad_input_is_a_named_error_and_leaves_the_model_intact(tokens, how, layer, says, images):
    vlm = tiny.build("llava", seed=6, num_layers=3)
    batch = vlm.prepare(images[:1], QUESTIONS[:1])
    before = prune.run(vlm, batch, "none", max_new_tokens=2).logits
    with pytest.raises(VTAError) as err:
        causal.ablate(vlm, batch, tokens, how, layer)
    assert says in str(err.value)
    assert torch.equal(prune.run(vlm, batch, "none", max_new_tokens=2).logits, before)
