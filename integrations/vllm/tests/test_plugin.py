"""vtanalysis-vllm (issue 40): vLLM serves our pre-LLM methods, and what it serves is ours.

For each family (LLaVA-1.5; LLaVA-NeXT with tiles, unpadding and newline tokens) and method at keep
0.25: the rows behind vLLM's kept embeddings equal `vtanalysis.prune.select`'s kept columns (in
sequence order), the prompt shrinks by exactly the pruned count, and the greedy answer equals
`prune.run`'s (positions renumbered in both: the methods' `positions="renumber"`).
"""
import pytest
import torch

import vtanalysis as vta
import vtanalysis_vllm
from conftest import QUESTION, close, engine, prompt_of
from vtanalysis_vllm import settings

METHODS = ["uniform", "pool", "divprune", "fastervlm", "visionzip"]
NEW_TOKENS = 8


def generate(llm, vlm, image, question=QUESTION):
    from vllm import SamplingParams
    out = llm.generate({"prompt": prompt_of(vlm, question), "multi_modal_data": {"image": image}},
                       SamplingParams(temperature=0, max_tokens=NEW_TOKENS), use_tqdm=False)[0]
    return list(out.outputs[0].token_ids), len(out.prompt_token_ids)


def sequence_rows(layout, columns):
    """Layout columns -> the image's rows in prompt order, ascending (LLaVA-NeXT's columns put the
    newline tokens last; vLLM's rows follow the prompt)."""
    positions = layout.image_positions
    return (positions[columns] - positions.min()).sort().values.cpu()


def test_an_engine_that_names_no_pruned_architecture_is_untouched(tiny):
    family, vlm, folder, _, image = tiny
    batch = vlm.prepare([image], [QUESTION])
    ours = vta.prune.run(vlm, batch, "none", 1.0, max_new_tokens=NEW_TOKENS)
    llm = engine(folder)
    try:
        tokens, prompt_len = generate(llm, vlm, image)
    finally:
        close(llm)
    assert prompt_len == batch.model_inputs["input_ids"].shape[1]
    assert tokens == ours.token_ids[0].tolist()


@pytest.mark.parametrize("method", METHODS)
def test_served_selection_and_answer_equal_vtanalysis(tiny, method):
    family, vlm, folder, architecture, image = tiny
    batch = vlm.prepare([image], [QUESTION])
    layout = batch.layouts[0]
    ours = vta.prune.run(vlm, batch, method, 0.25, max_new_tokens=NEW_TOKENS)
    llm = engine(folder, architectures=[architecture], vtanalysis={"method": method, "keep": 0.25})
    try:
        tokens, prompt_len = generate(llm, vlm, image)
        kept = vtanalysis_vllm.last_kept(llm)
    finally:
        close(llm)
    # kept_counts: the image tokens the LLM sees (VisionZip's [CLS] rows included)
    assert prompt_len == batch.model_inputs["input_ids"].shape[1] - layout.n_image_tokens + ours.kept_counts[0][0]
    assert len(kept) == 1 and torch.equal(kept[0], sequence_rows(layout, ours.kept[0][0]))
    assert tokens == ours.token_ids[0].tolist()


@pytest.mark.parametrize("method", METHODS)
def test_counts_follow_the_methods_rounding(tiny, method):
    """The plugin's count for a ratio is the method's plan in vtanalysis.prune (its authors' rounding)."""
    vlm = tiny[1]
    plan = vta.prune.get(method).plan
    for n in (576, 577, 100, 7):
        for keep in (0.1, 0.25, 1 / 3, 0.5, 0.999, 3):
            assert settings.Settings(method, keep).count(n) == plan(vlm, n, keep)[0][1], (n, keep)


def test_llava_next_counts_equal_the_engine_for_other_sizes_and_token_counts(tiny):
    """LLaVA-NeXT's placeholder count (per-crop budgets after unpadding, newlines on top), for image
    sizes with different tilings and for a ratio and a token count, equals what vtanalysis keeps."""
    family, vlm, _, _, image = tiny
    if family != "llava_next":
        pytest.skip("per-crop budgets differ from the image's only on LLaVA-NeXT")
    from vtanalysis_vllm.llava_next import packing_of
    from vtanalysis_vllm.select import kept_count
    for size in ((700, 200), (336, 336), (300, 640)):
        batch = vlm.prepare([image.resize(size)], [QUESTION])
        for keep in (0.1, 40):
            ours = vta.prune.run(vlm, batch, "fastervlm", keep, max_new_tokens=1)
            packing = packing_of(vlm.model.config, size[1], size[0])
            assert len(packing.codes) == batch.layouts[0].n_image_tokens
            assert kept_count(settings.Settings("fastervlm", keep), packing) == ours.kept_counts[0][0], (size, keep)


@pytest.mark.parametrize("hf, message", [
    ({"method": "nope", "keep": 0.25}, "unknown method 'nope'"),
    ({"method": "divprune", "keep": 1.5}, "outside \\(0, 1\\]"),
    ({"method": "divprune", "keep": 0}, "keep must be positive"),
    ({"method": "cdpruner", "keep": 0.25}, "conditions on the question"),
    ({"keep": 0.25}, "needs its settings"),
])
def test_a_bad_config_fails_at_engine_start_with_one_message(tiny, hf, message):
    family, _, folder, architecture, _ = tiny
    if family != "llava":
        pytest.skip("the settings are read by the same function for every family")
    with pytest.raises(Exception, match=message):
        engine(folder, architectures=[architecture], vtanalysis=hf)


def test_a_family_the_plugin_does_not_cover_is_named():
    class Qwen:
        model_type = "qwen2_vl"
        vtanalysis = {"method": "divprune", "keep": 0.25}

    with pytest.raises(settings.SettingsError, match="'qwen2_vl', which the plugin does not cover; covered: llava, "
                                                     "llava_next"):
        settings.read(Qwen(), "VtanalysisLlava", ("llava",))


def test_every_pre_llm_method_is_served_or_refused_with_a_reason():
    """The registry's pre-LLM methods (the only ones a serving engine could run before its LLM) are
    each served or named in the refusals with a reason; the in-LLM ones are neither."""
    pre = {name for name in vta.prune.methods() if vta.prune.get(name).where == "pre"}
    assert pre == set(settings.ROUNDING) | set(settings.REFUSED)
    assert not set(settings.ROUNDING) & set(settings.REFUSED)
