"""vtanalysis-vllm: vtanalysis's pre-LLM pruning methods served by vLLM (an out-of-tree plugin).

Switched on per engine by naming a pruned architecture and the method:

    LLM("llava-hf/llava-1.5-7b-hf",
        hf_overrides={"architectures": ["VtanalysisLlava"], "vtanalysis": {"method": "divprune", "keep": 0.25}})

or `vllm serve ... --hf-overrides '{"architectures": ["VtanalysisLlava"], "vtanalysis": {...}}'`
(`VtanalysisLlavaNext` for LLaVA-NeXT). Engines that do not name the architecture are untouched.
Methods: uniform, pool, divprune, fastervlm, visionzip; the selection rules are `vtanalysis.rules`,
the same functions `vtanalysis.prune` runs.
"""
ARCHITECTURES = {
    # name -> (class path, the model_types it serves)
    "VtanalysisLlava": ("vtanalysis_vllm.llava:PrunedLlavaForConditionalGeneration", ("llava",)),
    "VtanalysisLlavaNext": ("vtanalysis_vllm.llava_next:PrunedLlavaNextForConditionalGeneration", ("llava_next",)),
}


def register() -> None:
    """vLLM's `vllm.general_plugins` entry point: register the pruned architectures (lazily: the
    model module is imported only by an engine that names one)."""
    from vllm import ModelRegistry

    for name, (path, _) in ARCHITECTURES.items():
        if name not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(name, path)


def last_kept(llm) -> list:
    """Per image of the engine's last encoder batch, the patch indices its kept embeddings stand for
    (LongTensor, ascending; what `vtanalysis.prune.select` reports as kept). In-process engines
    only (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), as `LLM.apply_model` needs."""
    return [[k.cpu() for k in kept] for kept in llm.apply_model(lambda model: getattr(model, "last_kept", []))][0]
