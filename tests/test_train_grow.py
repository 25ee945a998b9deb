"""Issue 42: the grown deep demo (`vtanalysis.models.demo.train_grow`) starts as the shipped small demo, and its
recipe stops, lands (exported, recorded) and resumes in pieces."""
import dataclasses
import json

import pytest
import torch

from vtanalysis.models.demo import train_grow
from vtanalysis.models import demo

pytestmark = pytest.mark.skipif(not demo.available(), reason="the shipped demo weights are missing")

TINY = train_grow.GrowRecipe(tower_steps=2, tower_batch=6, instruct_steps=2, batch_size=2, warmup=1)
SMALL_EVALS = {"eval_scenes": 2, "probe_fit": 6, "probe_test": 4, "retrieval": 4, "layers": 2}


def _quiet(_):
    pass


def test_growth_preserves_the_function_and_breaks_the_copies_symmetry():
    torch.set_num_threads(1)
    small = train_grow.shipped()
    grown = train_grow.grow(small, copies=3, noise=0.1)
    assert grown.model.config.text_config.num_hidden_layers == 16
    batch = small.prepare([train_grow.shapes.scene(3).image], ["what color is the circle ?"])
    with torch.no_grad():
        a = small.model(**batch.model_inputs).logits
        b = grown.model(**batch.model_inputs).logits
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    layers = grown.model.model.language_model.layers
    for i in (1, 2, 3):
        assert float(layers[i].self_attn.o_proj.weight.detach().abs().max()) == 0
        assert not torch.equal(layers[i].self_attn.q_proj.weight, layers[0].self_attn.q_proj.weight)
    assert not torch.equal(layers[1].self_attn.q_proj.weight, layers[2].self_attn.q_proj.weight)


def test_pieces_land_and_resume(tmp_path):
    """A piece stopped by max_steps is evaluated, exported and recorded; a new folder resumes from the
    export (fresh optimizer) at the same stage and step, and the next piece finishes the recipe."""
    torch.set_num_threads(1)
    kept, record = tmp_path / "kept" / "weights.pt", tmp_path / "kept" / "training.json"
    first = train_grow.train(tmp_path / "a", TINY, max_steps=3, eval_sizes=SMALL_EVALS, export_to=kept,
                             training_json=record, log=_quiet)
    assert not first["finished"] and (first["stage"], first["step"]) == ("instruct", 1)
    doc = json.loads(record.read_text())
    assert len(doc["pieces"]) == 1 and doc["pieces"][0]["steps"] == {"tower": 2, "instruct": 1}
    last = doc["pieces"][0]["evals"][-1]
    assert last["step"] == 1 and "exact_match" in last and len(last["layers"]["image_mass"]) == 16
    assert any("probe_shape" in e for e in doc["pieces"][0]["evals"])
    state = torch.load(kept, weights_only=False)
    assert state["opt"] is None and state["llava"]["lm_head.weight"].dtype == torch.float16
    second = train_grow.train(tmp_path / "b", TINY, resume_from=kept, eval_sizes=SMALL_EVALS,
                              training_json=record, log=_quiet)
    assert second["finished"]
    doc = json.loads(record.read_text())
    assert len(doc["pieces"]) == 2 and doc["pieces"][1]["from"] == {"stage": "instruct", "step": 1}
    assert any("fresh optimizer" in e.get("event", "") for e in second["history"])


def test_layer_drop_skips_trained_layers_in_training_only():
    """Trained layers after the first are skipped in training mode (the last with probability
    drop_trained), never in eval mode."""
    torch.set_num_threads(1)
    grown = train_grow.grow(train_grow.shipped(), copies=3)
    batch = grown.prepare([train_grow.shapes.scene(3).image], ["what color is the circle ?"])
    with torch.no_grad():
        grown.model.eval()
        full = grown.model(**batch.model_inputs).logits
        handles = train_grow.layer_drop(grown, train_grow.GrowRecipe(drop_trained=1.0), torch.Generator())
        assert len(handles) == 3
        torch.testing.assert_close(grown.model(**batch.model_inputs).logits, full)
        grown.model.train()
        dropped = grown.model(**batch.model_inputs).logits
        for h in handles:
            h.remove()
    assert not torch.allclose(dropped, full, atol=1e-3)


def test_a_recipe_field_added_later_counts_as_its_default():
    saved = dataclasses.asdict(train_grow.GrowRecipe())
    saved.pop("drop_trained")
    assert train_grow.same_recipe(saved, train_grow.GrowRecipe())
    assert not train_grow.same_recipe(saved, train_grow.GrowRecipe(drop_trained=0.2))


def test_a_finished_run_extended_goes_on_at_its_last_instruct_step(tmp_path):
    torch.set_num_threads(1)
    done = train_grow.train(tmp_path, TINY, eval_sizes=SMALL_EVALS, final_eval=False, log=_quiet)
    assert done["finished"]
    longer = dataclasses.replace(TINY, instruct_steps=3)
    more = train_grow.train(tmp_path, longer, max_steps=0, eval_sizes=SMALL_EVALS, final_eval=False, log=_quiet)
    assert (more["stage"], more["step"]) == ("instruct", 2)
    assert train_grow.train(tmp_path, longer, eval_sizes=SMALL_EVALS, final_eval=False, log=_quiet)["finished"]
