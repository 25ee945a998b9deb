"""Demo-data issue: the scene generator is deterministic and its masks match its answers; the dataset
format (JSONL + RLE masks) round-trips; the eval harness scores a hand-made mini set correctly."""
import numpy as np
import pytest

from vtanalysis.data import shapes
from vtanalysis.data.dataset import Sample, read_samples
from vtanalysis.evaluate import evaluate, normalise, score
from vtanalysis.models import tiny

NAMES = {v: k for k, v in shapes.COLORS.items()}


def test_scene_is_deterministic_by_seed():
    a, b, c = shapes.scene(7), shapes.scene(7), shapes.scene(8)
    assert np.array_equal(a.image, b.image) and not np.array_equal(a.image, c.image)
    assert [(o.shape, o.color, o.center) for o in a.objects] == [(o.shape, o.color, o.center) for o in b.objects]
    assert shapes.questions(a, 7) == shapes.questions(b, 7)


@pytest.mark.parametrize("seed", range(40))
def test_masks_are_the_drawn_pixels_and_match_the_answers(seed):
    sc = shapes.scene(seed)
    assert 2 <= len(sc.objects) <= 6
    union = np.zeros(sc.image.shape[:2], dtype=int)
    for o in sc.objects:
        union += o.mask
        pixels = sc.image[o.mask]
        # every mask pixel has the object's colour (occlusion-free), and the box bounds the mask
        assert (pixels == shapes.COLORS[o.color]).all()
        x0, y0, x1, y1 = o.box
        assert o.mask[y0:y1, x0:x1].sum() == o.mask.sum()
    assert union.max() <= 1  # no overlaps
    for q in shapes.questions(sc, seed):
        targets = [sc.objects[i] for i in q.targets]
        if q.type in ("color", "small"):
            assert NAMES[tuple(sc.image[targets[0].mask][0])] == q.answer
        elif q.type == "shape":
            assert targets[0].shape == q.answer and q.question.split()[4] == targets[0].color
        elif q.type == "exist":
            assert (q.answer == "yes") == bool(targets)
        elif q.type == "count":
            assert shapes.NUMBERS[len(targets)] == q.answer
            assert all(shapes.PLURAL[t.shape] in q.question for t in targets)
        elif q.type == "position":
            a, b = targets
            left = np.nonzero(a.mask)[1].mean() < np.nonzero(b.mask)[1].mean()
            assert (q.answer == "yes") == left
        if q.type == "small":
            assert targets[0].size == "small" and targets[0].mask.sum() < min(o.mask.sum() for o in sc.objects
                                                                               if o.size != "small")


def test_every_question_type_occurs_with_balanced_yes_no():
    seen = {}
    for s in range(300):
        for q in shapes.questions(shapes.scene(s), s):
            seen.setdefault(q.type, []).append(q.answer)
    assert set(seen) == set(shapes.TYPES)
    for t in ("exist", "position"):
        assert 0.35 < seen[t].count("yes") / len(seen[t]) < 0.65


def test_rle_round_trip_edge_cases():
    for mask in [np.zeros((3, 4), bool), np.ones((3, 4), bool), np.eye(5, dtype=bool),
                 np.random.default_rng(0).random((17, 9)) > 0.5]:
        rle = shapes.mask_to_rle(mask)
        assert sum(rle["counts"]) == mask.size
        assert np.array_equal(shapes.rle_to_mask(rle), mask)


def test_dataset_folder_round_trips(tmp_path):
    shapes.write_dataset(tmp_path, n_images=5, seed=3, progress=False)
    samples = read_samples(tmp_path)
    assert len(samples) >= 5 and len({s.id for s in samples}) == len(samples)
    for s in samples:
        sc = shapes.scene(int(s.id.split("-")[0]))
        q = next(q for q in shapes.questions(sc, sc.seed) if q.type == s.type)
        assert (s.question, s.answer, s.extra["targets"]) == (q.question, q.answer, q.targets)
        want = np.zeros(sc.image.shape[:2], bool)
        for i in q.targets:
            want |= sc.objects[i].mask
        assert np.array_equal(shapes.target_mask(s), want)
        from PIL import Image
        assert np.array_equal(np.asarray(Image.open(s.image)), sc.image)  # PNG: lossless


def test_score_on_a_hand_made_mini_set(tmp_path):
    mini = [Sample("a", tmp_path, "q", "red", "color"), Sample("b", tmp_path, "q", "Blue", "color"),
            Sample("c", tmp_path, "q", "yes", "exist"), Sample("d", tmp_path, "q", "two", "count")]
    out = score(["red", "The blue.", "no", "2"], mini)
    assert out["per_type"] == {"color": 1.0, "count": 1.0, "exist": 0.0}
    assert out["accuracy"] == 0.75 and out["counts"] == {"color": 2, "count": 1, "exist": 1}
    # answers are compared whole after the VQA normalisation (the first word alone accepted these)
    assert score(["red square", "Two apples", "yes", "two"], mini)["accuracy"] == 0.5
    assert normalise("  Yes, it is.") == "yes it is" and normalise("Black-and-white!") == "black and white"
    assert normalise("An apple.") == "apple" and normalise("1.5") == "1.5" and normalise("Three") == "3"
    with pytest.raises(ValueError, match="2 predictions for 4 samples"):
        score(["a", "b"], mini)


def test_evaluate_scores_what_the_model_answered(tmp_path):
    shapes.write_dataset(tmp_path, n_images=3, seed=0, progress=False)
    samples = read_samples(tmp_path)
    vlm = tiny.build("llava", seed=0)
    plain = evaluate(vlm, samples, batch_size=4, progress=False)
    assert plain["accuracy"] == score(plain["predictions"], samples)["accuracy"]
    assert plain["flops_ratio"] == pytest.approx(1.0)
    pruned = evaluate(vlm, samples, method="fastv", keep=0.25, batch_size=4, progress=False)
    assert pruned["flops_ratio"] < 1.0 and pruned["samples"] == len(samples)


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_evaluating_runs_together_answers_as_each_run_alone(tmp_path, family):
    """`evaluate_many` prepares each batch once and shares the vision tower's output between runs of
    methods that read nothing inside it; every result must still be `evaluate`'s for that run alone
    (a reused output from another batch, or one a [CLS] method saw, would change answers or FLOPs)."""
    from vtanalysis.evaluate import evaluate_many
    from vtanalysis.models.tower_reuse import TowerReuse

    shapes.write_dataset(tmp_path, n_images=2, seed=0, progress=False)
    samples = read_samples(tmp_path)[:7]
    vlm = tiny.build(family, seed=0)
    runs = [{"method": "none"}, {"method": "fastv", "keep": 0.25}, {"method": "random", "keep": 0.5, "seed": 1},
            {"method": "divprune", "keep": 0.25}, {"method": "pool", "keep": 0.25}]
    if vlm.adapter.has_cls:
        runs.append({"method": "fastervlm", "keep": 0.25})  # reads the tower's [CLS] attention: runs its own
    seen = []
    real = TowerReuse._around

    def counted(self, forward, *args, **kwargs):
        seen.append(self)
        return real(self, forward, *args, **kwargs)
    TowerReuse._around = counted
    try:
        together = evaluate_many(vlm, samples, runs, batch_size=4, progress=False)
    finally:
        TowerReuse._around = real
    drop_times = lambda r: {k: v for k, v in r.items() if not k.endswith("_s")}  # noqa: E731
    for run, got in zip(runs, together):
        alone = evaluate(vlm, samples, method=run["method"], keep=run.get("keep", 1.0), seed=run.get("seed", 0),
                         batch_size=4, progress=False)
        assert drop_times(got) == drop_times(alone), run
    shared = 4  # none, fastv, random, divprune (pool edits the model around the tower; fastervlm reads it)
    reuse = seen[0]
    assert set(seen) == {reuse} and reuse.calls == 2 * shared  # two batches, each seen by every sharing run
    assert reuse.reused == 2 * (shared - 1)  # the tower ran once per batch for them


def test_runs_evaluated_together_resume_each_after_its_own_last_batch(tmp_path):
    """An interrupted `evaluate_many` leaves each run's records where it stopped; the next call
    answers only what is missing and returns what one uninterrupted call returns."""
    from vtanalysis.evaluate import evaluate_many

    shapes.write_dataset(tmp_path / "data", n_images=2, seed=0, progress=False)
    samples = read_samples(tmp_path / "data")[:6]
    vlm = tiny.build("llava", seed=0)
    runs = [{"method": "fastv", "keep": 0.25}, {"method": "random", "keep": 0.5, "seed": 2}]
    folders = [tmp_path / "a", tmp_path / "b"]
    whole = evaluate_many(vlm, samples, runs, batch_size=4, progress=False, records=folders)
    for folder, lines in zip(folders, (1 + 4, 1)):  # run a keeps its settings and first batch; run b its settings
        path = folder / "part-0-of-1.jsonl"
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:lines]))
    resumed = evaluate_many(vlm, samples, runs, batch_size=4, progress=False, records=folders)
    assert [r["predictions"] for r in resumed] == [r["predictions"] for r in whole]
    assert [r["flops_ratio"] for r in resumed] == [r["flops_ratio"] for r in whole]
