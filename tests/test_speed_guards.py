"""Guards of GPU speed that run without a GPU (speed issue, item 5).

A 7B prefill of ~600 tokens is launch-bound on a GPU: every dispatched aten op is a kernel
launch, and every host round trip stalls the stream. So, counted on CPU:
- during a pruned prefill, vtanalysis' own code makes no host round trip (AdaptPrune: only its
  NMS's few deliberate checks), and over a whole `prune.run` the count does not grow with the
  model's depth or with the number of kept tokens;
- a pruned decoder layer that is not a stage boundary dispatches exactly as many ops as the
  unpruned layer, and the boundary layers dispatch the same number whatever `keep` is;
- the collector makes no round trip during its forward pass and costs a constant number of ops
  per recorded layer;
- without padding or fillers the pruned layers get attention_mask=None (SDPA's causal kernels);
  under eager attention they get the equivalent mask, with the same logits.
On a GPU, `torch.cuda.set_sync_debug_mode("error")` around the decoder layers turns any sync into
an error (skipped without CUDA).
"""
import pytest
import torch

import vtanalysis as vta
from conftest import QUESTIONS
from vtanalysis import prune
from vtanalysis.prune.vision import vision_refusal
from vtanalysis.models import tiny
from vtanalysis.prune import adaptprune
from vtanalysis.perf import DispatchCounter, HostRoundTrips

NMS_CHECK = "prune/methods/adaptprune.py"  # the NMS's deliberate host checks (a few per selection)


def keeps_for(method):
    """A small and a large budget (PyramidDrop keeps every token in its first quarter of layers,
    so its average budget is at least 0.25)."""
    return (0.3, 0.6) if method == "pyramiddrop" else (0.1, 0.5)


def knobs_for(vlm, method):
    spec = prune.get(method)
    if vision_refusal(vlm, spec.needs) is not None:
        pytest.skip("no vision [CLS] token in this family")
    if method == "cdpruner":
        from reference import tiny_clip

        return {"clip": tiny_clip(vlm)}
    return {"positions": "original"} if vlm.adapter.mrope and spec.positions == "renumber" else {}


@pytest.fixture(scope="module", params=["llava", "llava-next", "gemma3"])
def models(request):
    """The same family at depths 8 and 16 (multi-stage schedules have 3 stages at both)."""
    return {depth: tiny.build(request.param, seed=1, num_layers=depth) for depth in (8, 16)}


def trips(vlm, batch, method, keep, within=None):
    knobs = knobs_for(vlm, method)
    with HostRoundTrips(within=within) as t:
        prune.run(vlm, batch, method, keep, max_new_tokens=1, **knobs)
    return t


@pytest.mark.parametrize("method", [m for m in prune.methods() if prune.get(m).where != "image"])
def test_round_trips_do_not_grow_with_depth_or_keep(models, images, method):
    counts = {}
    for depth, vlm in models.items():
        batch = vlm.prepare(images[:2], QUESTIONS[:2])
        lm = vlm.adapter.language_model(vlm.model)
        trips(vlm, batch, method, 0.5)  # warm-up: AdaptPrune builds its neighbour tables once per grid shape
        for keep in keeps_for(method):
            during = trips(vlm, batch, method, keep, within=lm)
            outside_nms = {site: n for site, n in during.sites.items() if not site.startswith(NMS_CHECK)}
            assert outside_nms == {}, f"host round trips inside the prefill: {outside_nms}"
            assert sum(during.sites.values()) <= 3 * len(batch), "NMS: at most 3 checks per selection"
            whole = trips(vlm, batch, method, keep)
            counts[depth, keep] = sum(n for site, n in whole.sites.items() if not site.startswith(NMS_CHECK))
    assert len(set(counts.values())) == 1, f"round trips by (depth, keep): {counts}"


def per_layer_ops(vlm, batch, method, keep):
    with DispatchCounter(vlm.decoder_layers) as ops:
        res = prune.run(vlm, batch, method, keep, max_new_tokens=1, **knobs_for(vlm, method))
    return ops.per_layer, res.stage_layers


@pytest.mark.parametrize("method", [m for m in prune.methods() if prune.get(m).where == "llm" and m != "none"])
def test_pruned_layers_dispatch_no_more_than_unpruned(models, images, method):
    vlm = models[8]
    for n in (1, 2):  # no padding; left padding (a mask per stage)
        batch = vlm.prepare(images[:n], QUESTIONS[:n])
        base, _ = per_layer_ops(vlm, batch, "none", 1.0)
        small, large = keeps_for(method)
        few, stages = per_layer_ops(vlm, batch, method, small)
        many, stages_many = per_layer_ops(vlm, batch, method, large)
        boundary = {k for layer in stages + stages_many for k in (layer - 1, layer)}  # VTW's layer moves with keep
        for layer in range(vlm.num_layers):
            if layer not in boundary:
                assert few[layer] == base[layer], f"layer {layer}: {few[layer]} ops pruned vs {base[layer]} unpruned"
                assert many[layer] == base[layer]
            elif not method.startswith("adaptprune") and stages == stages_many:  # NMS rounds: test_nms_rounds_grow_sublinearly
                # host-known branches (fillers when samples keep different counts) may add a few ops
                assert abs(many[layer] - few[layer]) <= 12, f"layer {layer}: {few[layer]} vs {many[layer]} ops"


def test_nms_rounds_grow_sublinearly():
    """AdaptPrune's greedy NMS is sequential; its parallel rounds (~2.5 sqrt(keep), ~10 ops each)
    must stay far below a per-pick loop (keep steps) on attention-like scores."""
    g = torch.Generator().manual_seed(0)
    scores = torch.softmax(2 * torch.randn(48 * 60, generator=g), 0)
    keys = torch.randn(48 * 60, 32, generator=g)
    ops = {}
    for keep in (72, 288, 1152):
        with DispatchCounter([]) as d:
            adaptprune.adaptive_nms(scores, keys, (48, 60), keep)
        ops[keep] = d.outside
    assert ops[1152] - ops[72] < 10 * (1152 - 72) / 8, ops
    assert ops[1152] < 4 * ops[72], ops  # 16x the picks: at most sqrt(16)x the ops


def test_collector_stays_on_the_device_and_costs_constant_ops_per_layer(images):
    per_depth = {}
    for depth in (4, 8):
        vlm = tiny.build("llava-next", seed=1, num_layers=depth)
        batch = vlm.prepare(images[:2], QUESTIONS[:2])
        lm = vlm.adapter.language_model(vlm.model)
        with HostRoundTrips(within=lm) as t, DispatchCounter(vlm.decoder_layers) as ops:
            vta.record_attention(vlm, batch)
        with HostRoundTrips() as whole:
            vta.record_attention(vlm, batch)
        with DispatchCounter(vlm.decoder_layers) as plain, torch.inference_mode():
            vlm.model(**batch.model_inputs, use_cache=False)
        assert t.count == 0, dict(t.sites)
        assert len(set(ops.per_layer)) == 1 and ops.per_layer[0] <= plain.per_layer[0] + 14
        per_depth[depth] = whole.count
    assert per_depth[4] == per_depth[8]


def test_no_mask_without_padding_and_eager_gets_the_same_answer(images):
    vlm = tiny.build("llava", seed=4, num_layers=4)
    batch = vlm.prepare(images[:1], QUESTIONS[:1])
    # the wrapper replaces the mask inside the layer's forward, so read what reaches self_attn
    seen = {}
    attn = vlm.decoder_layers[3].self_attn
    handle = attn.register_forward_pre_hook(lambda m, a, k: seen.update(mask=k.get("attention_mask")), with_kwargs=True)
    try:
        sdpa = prune.run(vlm, batch, "fastv", 0.25, layer=2, max_new_tokens=3)
    finally:
        handle.remove()
    assert seen["mask"] is None, "batch 1, no padding: the pruned layers run SDPA's causal kernel"
    vlm.model.set_attn_implementation("eager")
    try:
        eager = prune.run(vlm, batch, "fastv", 0.25, layer=2, max_new_tokens=3)
    finally:
        vlm.model.set_attn_implementation("sdpa")
    assert torch.equal(eager.kept[0][0], sdpa.kept[0][0])
    torch.testing.assert_close(eager.logits, sdpa.logits, atol=1e-5, rtol=0)
    assert torch.equal(eager.token_ids, sdpa.token_ids)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("method", ["fastv", "adaptprune", "adaptinfer", "adafv", "visionzip"])
def test_no_synchronisation_inside_decoder_layers_on_cuda(images, method):
    vlm = tiny.build("llava", seed=1, num_layers=8, device="cuda")
    batch = vlm.prepare(images[:1], QUESTIONS[:1])
    prune.run(vlm, batch, method, 0.25, max_new_tokens=1)  # warm-up (lazy CUDA init syncs)
    layers = vlm.decoder_layers
    handles = [layers[0].register_forward_pre_hook(lambda *_: torch.cuda.set_sync_debug_mode("error")),
               layers[-1].register_forward_hook(lambda *_: torch.cuda.set_sync_debug_mode("default"))]
    try:
        prune.run(vlm, batch, method, 0.25, max_new_tokens=1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        for h in handles:
            h.remove()
