"""Issue 14: the deep demo recipe (`vtanalysis.models.demo.train_deep`) resumes exactly where it stopped, and
its LLaVA reads the contrastively trained tower frozen, as LLaVA's stages do."""
import torch

from vtanalysis.models.demo import train_deep

TINY = train_deep.Recipe(clip_steps=3, clip_batch=6, align_steps=2, instruct_steps=2, batch_size=2, warmup=1)


def _quiet(_):
    pass


def test_stopping_and_resuming_equals_one_uninterrupted_run(tmp_path):
    """Stopped inside the clip stage, then inside align, then finished: every weight equals the run
    that went through in one call (same data order, optimizer state restored per stage)."""
    whole = train_deep.train(tmp_path / "whole", TINY, eval_every=10**6, eval_scenes=2, log=_quiet)
    first = train_deep.train(tmp_path / "parts", TINY, max_steps=2, eval_every=10**6, eval_scenes=2, log=_quiet)
    assert not first["finished"] and (first["stage"], first["step"]) == ("clip", 2)
    second = train_deep.train(tmp_path / "parts", TINY, max_steps=2, eval_every=10**6, eval_scenes=2, log=_quiet)
    assert (second["stage"], second["step"]) == ("align", 1)
    last = train_deep.train(tmp_path / "parts", TINY, eval_every=10**6, eval_scenes=2, log=_quiet)
    assert last["finished"] and whole["finished"]
    for a, b in ((whole["vlm"].model, last["vlm"].model), (whole["clip"], last["clip"])):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def test_the_llava_tower_is_the_clip_vision_model_frozen(tmp_path):
    """After both LLM stages the LLaVA vision tower still equals the CLIP stage's vision model."""
    result = train_deep.train(tmp_path, TINY, eval_every=10**6, eval_scenes=2, log=_quiet)
    tower, clip_vision = result["vlm"].model.model.vision_tower.state_dict(), result["clip"].vision_model.state_dict()
    assert tower.keys() == clip_vision.keys()
    for k in tower:
        torch.testing.assert_close(tower[k], clip_vision[k], rtol=0, atol=0, msg=k)
    assert not any(p.requires_grad for p in result["vlm"].model.model.vision_tower.parameters())
    projector = result["vlm"].model.model.multi_modal_projector
    fresh = train_deep.llava_from(result["clip"], result["vlm"].processor, TINY.seed).model.model.multi_modal_projector
    assert not torch.equal(projector.linear_1.weight, fresh.linear_1.weight)  # the LLM stages did train


def test_a_checkpoint_of_another_recipe_is_refused(tmp_path):
    import dataclasses

    import pytest

    from vtanalysis.errors import VTAError

    train_deep.train(tmp_path, TINY, max_steps=1, eval_every=10**6, eval_scenes=2, log=_quiet)
    with pytest.raises(VTAError, match="another recipe"):
        train_deep.train(tmp_path, dataclasses.replace(TINY, lr=5e-4), eval_scenes=2, log=_quiet)


def test_exported_weights_resume_in_a_new_folder_with_a_fresh_optimizer(tmp_path):
    """A session's scratch folder is lost; the exported weights (fp16, no optimizer) resume the run in
    a new folder at the same stage and step, from those weights, and the history says so."""
    import pytest

    from vtanalysis.errors import VTAError

    first = train_deep.train(tmp_path / "a", TINY, max_steps=4, eval_every=10**6, eval_scenes=2, log=_quiet)
    assert (first["stage"], first["step"]) == ("align", 1)
    exported = train_deep.export_weights(tmp_path / "a", tmp_path / "kept" / "weights.pt")
    assert exported.stat().st_size < 0.6 * (tmp_path / "a" / "checkpoint.pt").stat().st_size
    with pytest.raises(VTAError, match="no such file"):
        train_deep.train(tmp_path / "b", TINY, resume_from=tmp_path / "missing.pt", log=_quiet)
    resumed = train_deep.train(tmp_path / "b", TINY, max_steps=0, resume_from=exported, eval_every=10**6,
                               eval_scenes=2, log=_quiet)
    assert (resumed["stage"], resumed["step"]) == ("align", 1)
    before, after = first["vlm"].model.state_dict(), resumed["vlm"].model.state_dict()
    for k in before:
        torch.testing.assert_close(after[k], before[k].half().float(), rtol=0, atol=0, msg=k)
    assert "fresh optimizer" in resumed["history"][-1]["event"]
    done = train_deep.train(tmp_path / "b", TINY, eval_every=10**6, eval_scenes=2, log=_quiet)
    assert done["finished"]


def test_the_clip_patch_loss_weighs_object_and_background_patches_half_each():
    """A head perfect on the background (most patches) but uniform on the object patches keeps the
    shape/colour/size losses at half their uniform value (an unweighted mean would make them
    vanish as objects get rarer: the first recipe's tower never learned shape, 0.26 on objects)."""
    import math

    import torch.nn.functional as F

    b, n = 2, 16
    labels = torch.zeros(b, 5, n, dtype=torch.long)
    labels[:, :3, :2] = 1  # two object patches per image, the rest background
    labels[:, 3], labels[:, 4] = torch.arange(n) % 4, torch.arange(n) // 4
    parts = []
    for k, classes in enumerate((*train_deep.ATTRIBUTE_CLASSES, 4, 4)):
        logits = torch.full((b, n, classes), -50.0)
        if k < 3:
            logits[..., 0] = 50.0  # sure of "background" everywhere ...
            logits[:, :2] = 0.0  # ... and uniform on the object patches
        else:
            logits.scatter_(-1, labels[:, k].unsqueeze(-1), 50.0)  # column and row exact
        parts.append(logits)
    loss = train_deep.balanced_patch_loss(tuple(parts), labels)
    expected = sum(0.5 * math.log(c) for c in train_deep.ATTRIBUTE_CLASSES) / 5
    assert abs(float(loss) - expected) < 1e-4
    unweighted = sum(F.cross_entropy(p.flatten(0, 1), labels[:, k].flatten()) for k, p in enumerate(parts)) / 5
    assert float(unweighted) < 0.3 * expected
