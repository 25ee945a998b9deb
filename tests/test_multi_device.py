"""Models split over several devices (issue 15, `device_map="auto"` for models larger than one GPU).

No GPU is lent here, so the tiny models are dispatched by accelerate, as `from_pretrained(device_map=...)`
does, over two fake GPUs (`fake_devices`): any op that mixes tensors of two devices raises, as on
CUDA. On such a split the collector's rows and every pruning method's answers, logits and kept tokens
equal those of the same model on one device.
"""
import pytest
import torch

from conftest import QUESTIONS
from fake_devices import FakeDevices, MixedDevices, split
from vtanalysis import prune
from vtanalysis.collect import record_attention
from vtanalysis.errors import VTAError
from vtanalysis.models import load_vlm, tiny
from vtanalysis.prune.vision import vision_refusal

SPLIT_FAMILIES = ["llava", "llava-next", "qwen2-vl", "gemma3", "qwen3-vl"]


@pytest.fixture(scope="module", params=SPLIT_FAMILIES)
def pair(request):
    """(the tiny model on one device, its copy split over fakegpu:0 and fakegpu:1)."""
    vlm = tiny.build(request.param, seed=1, num_layers=4)
    with FakeDevices():
        return vlm, split(vlm)


def test_the_split_is_real_and_strict(pair):
    """The layers sit on two devices, and an op given tensors of both fails, as on CUDA (accelerate's
    hooks move a module's inputs; a bare op on its weights gets no such help): the harness can fail."""
    one, two = pair
    devices = {next(layer.parameters()).device for layer in two.decoder_layers}
    assert {str(d) for d in devices} == {"fakegpu:0", "fakegpu:1"}
    with FakeDevices(), torch.inference_mode():
        x = torch.zeros(1, 3, one.config.get_text_config().hidden_size, device="fakegpu:0")
        with pytest.raises(MixedDevices):
            torch.nn.functional.linear(x, two.decoder_layers[-1].mlp.down_proj.weight.T)


def test_collected_rows_equal_one_device(pair, images):
    """Collector (design 'rows equal'): every layer's text-to-image and text-to-text rows."""
    one, two = pair
    ref = record_attention(one, one.prepare(images[:2], QUESTIONS[:2]))
    with FakeDevices():
        got = record_attention(two, two.prepare(images[:2], QUESTIONS[:2]))
    for a, b in zip(ref, got):
        torch.testing.assert_close(b.text_to_image, a.text_to_image, atol=1e-5, rtol=0)
        torch.testing.assert_close(b.text_to_text, a.text_to_text, atol=1e-5, rtol=0)


METHODS = [("fastv", {}), ("adaptprune", {}), ("fitprune", {}), ("pyramiddrop", {}), ("adaptinfer", {}),
           ("sparsevlm", {}), ("dart", {}), ("fastervlm", {}), ("visionzip", {}), ("divprune", {}), ("pool", {})]


@pytest.mark.parametrize("method,knobs", METHODS)
def test_pruned_runs_equal_one_device(pair, images, method, knobs):
    """Every tensor the engine builds reaches the device of the layer that uses it: answers, logits,
    kept tokens and counts equal the one-device run (batch of 2 images of different sizes)."""
    one, two = pair
    spec = prune.get(method)
    if vision_refusal(one, spec.needs) is not None:
        pytest.skip("this family has no vision [CLS] token")
    if spec.positions == "renumber" and spec.where == "llm" and one.adapter.mrope:
        knobs = {**knobs, "positions": "original"}
    ref = prune.run(one, one.prepare(images[:2], QUESTIONS[:2]), method, 0.25, max_new_tokens=3, **knobs)
    with FakeDevices():
        got = prune.run(two, two.prepare(images[:2], QUESTIONS[:2]), method, 0.25, max_new_tokens=3, **knobs)
    assert got.stage_layers == ref.stage_layers
    assert torch.equal(got.token_ids, ref.token_ids)
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-4, rtol=0)
    assert got.image_tokens_per_layer == ref.image_tokens_per_layer
    for a, b in zip(ref.kept, got.kept):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def test_load_vlm_hands_the_device_map_to_from_pretrained(tmp_path, images, monkeypatch):
    """`load_vlm(path, device_map=...)` (and device="auto") loads through from_pretrained's placement
    and moves nothing after it (a `.to(device)` would undo the split; transformers' loader refuses
    fake devices, so the split itself is tested above with accelerate's dispatch, as transformers
    calls it); the model computes what the saved one does; bundled tiny models refuse a map."""
    import transformers

    vlm = tiny.build("llava", seed=2)
    vlm.model.save_pretrained(tmp_path)
    vlm.processor.save_pretrained(tmp_path)
    seen, real = [], transformers.LlavaForConditionalGeneration.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("device_map"))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.LlavaForConditionalGeneration, "from_pretrained", spy)
    monkeypatch.setattr(torch.nn.Module, "to", lambda *a, **k: pytest.fail("moved after a device_map load"))
    placed = load_vlm(tmp_path, device_map={"": "cpu"})
    load_vlm(tmp_path, device="auto")
    monkeypatch.undo()
    assert seen == [{"": "cpu"}, "auto"]
    batch = vlm.prepare(images[:1], QUESTIONS[:1])
    with torch.inference_mode():
        torch.testing.assert_close(placed.model(**batch.model_inputs).logits, vlm.model(**batch.model_inputs).logits)
    with pytest.raises(VTAError, match="device_map is for checkpoints"):
        load_vlm("tiny-llava", device="auto")


@pytest.mark.parametrize("method", ["fastervlm", "visionzip", "adafv", "fastv"])
def test_a_vision_tower_on_another_device_than_the_embeddings(images, method):
    """Pre-LLM methods read the vision tower's [CLS] attention and features and merge in the
    projector: with the tower and projector on fakegpu:1 and the embeddings on fakegpu:0 the run
    equals the one-device run."""
    one = tiny.build("llava", seed=1, num_layers=4)
    with FakeDevices():
        two = split(one, vision_last=True)
        assert str(next(two.model.model.vision_tower.parameters()).device) == "fakegpu:1"
        assert str(two.device) == "fakegpu:0"
        got = prune.run(two, two.prepare(images[:2], QUESTIONS[:2]), method, 0.25, max_new_tokens=3)
    ref = prune.run(one, one.prepare(images[:2], QUESTIONS[:2]), method, 0.25, max_new_tokens=3)
    assert torch.equal(got.token_ids, ref.token_ids)
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-4, rtol=0)
    for a, b in zip(ref.kept, got.kept):
        for x, y in zip(a, b):
            assert torch.equal(x, y)
