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
