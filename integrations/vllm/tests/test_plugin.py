"""vtanalysis-vllm (issue 40): vLLM serves our pre-LLM methods, and what it serves is ours.

For each method at keep 0.25 on a tiny LLaVA-1.5: the patches behind vLLM's kept embeddings equal
`vtanalysis.prune.select`'s kept columns, the prompt shrinks by exactly the pruned count, and the
greedy answer equals `prune.run`'s (positions renumbered in both: the methods' `positions="renumber"`).
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


def test_an_engine_that_names_no_pruned_architecture_is_untouched(tiny_llava, scene):
    vlm, folder = tiny_llava
    batch = vlm.prepare([scene], [QUESTION])
    ours = vta.prune.run(vlm, batch, "none", 1.0, max_new_tokens=NEW_TOKENS)
    llm = engine(folder)
    try:
        tokens, prompt_len = generate(llm, vlm, scene)
    finally:
        close(llm)
    assert prompt_len == batch.model_inputs["input_ids"].shape[1]
    assert tokens == ours.token_ids[0].tolist()


@pytest.mark.parametrize("method", METHODS)
def test_served_selection_and_answer_equal_vtanalysis(tiny_llava, scene, method):
    vlm, folder = tiny_llava
    batch = vlm.prepare([scene], [QUESTION])
    n = batch.layouts[0].n_image_tokens
    ours = vta.prune.run(vlm, batch, method, 0.25, max_new_tokens=NEW_TOKENS)
    llm = engine(folder, architectures=["VtanalysisLlava"], vtanalysis={"method": method, "keep": 0.25})
    try:
        tokens, prompt_len = generate(llm, vlm, scene)
        kept = vtanalysis_vllm.last_kept(llm)
    finally:
        close(llm)
    k = settings.Settings(method, 0.25).count(n)
    assert prompt_len == batch.model_inputs["input_ids"].shape[1] - (n - k)
    assert len(kept) == 1 and torch.equal(kept[0], ours.kept[0][0].sort().values.cpu())
    assert tokens == ours.token_ids[0].tolist()


@pytest.mark.parametrize("method", METHODS)
def test_counts_follow_the_methods_rounding(tiny_llava, method):
    """The plugin's count for a ratio is the method's plan in vtanalysis.prune (its authors' rounding)."""
    vlm, _ = tiny_llava
    plan = vta.prune.get(method).plan
    for n in (576, 577, 100, 7):
        for keep in (0.1, 0.25, 1 / 3, 0.5, 0.999, 3):
            assert settings.Settings(method, keep).count(n) == plan(vlm, n, keep)[0][1], (n, keep)


@pytest.mark.parametrize("hf, message", [
    ({"method": "nope", "keep": 0.25}, "unknown method 'nope'"),
    ({"method": "divprune", "keep": 1.5}, "outside \\(0, 1\\]"),
    ({"method": "divprune", "keep": 0}, "keep must be positive"),
    ({"method": "cdpruner", "keep": 0.25}, "conditions on the question"),
    ({"keep": 0.25}, "needs its settings"),
])
def test_a_bad_config_fails_at_engine_start_with_one_message(tiny_llava, hf, message):
    _, folder = tiny_llava
    with pytest.raises(Exception, match=message):
        engine(folder, architectures=["VtanalysisLlava"], vtanalysis=hf)


def test_a_family_the_plugin_does_not_cover_is_named():
    class Qwen:
        model_type = "qwen2_vl"
        vtanalysis = {"method": "divprune", "keep": 0.25}

    with pytest.raises(settings.SettingsError, match="'qwen2_vl', which the plugin does not cover; covered: llava"):
        settings.read(Qwen(), "VtanalysisLlava", ("llava",))
