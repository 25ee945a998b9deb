"""Random baselines draw per sample (fidelity issue, part 2: AdaptPrune Table 5 'random' and
'random 3x3' were reseeded with 0 on every call, so every sample got the same mask)."""
import torch

from conftest import QUESTIONS
from vtanalysis import prune
from vtanalysis.data.dataset import Sample
from vtanalysis.evaluate import evaluate
from vtanalysis.models import tiny


def test_samples_of_a_batch_draw_different_tokens_and_seeds_reproduce(images):
    vlm = tiny.build("llava", seed=1, num_layers=4)
    same = [images[2]] * 3
    batch = vlm.prepare(same, [QUESTIONS[0]] * 3)
    for method in ("random", "random-3x3"):
        kept = prune.run(vlm, batch, method, 0.25, max_new_tokens=1).kept[0]
        assert len({tuple(c.tolist()) for c in kept}) == 3, f"{method}: identical samples got the same draw"
        again = prune.run(vlm, batch, method, 0.25, max_new_tokens=1).kept[0]
        assert all(torch.equal(a, b) for a, b in zip(kept, again))
        other = prune.run(vlm, batch, method, 0.25, max_new_tokens=1, seed=7).kept[0]
        assert not all(torch.equal(a, b) for a, b in zip(kept, other))
        # sample b draws with seed + b: the second sample at seed 0 is the first at seed 1
        shifted = prune.run(vlm, vlm.prepare(same[:1], [QUESTIONS[0]]), method, 0.25, max_new_tokens=1, seed=1).kept[0]
        assert torch.equal(shifted[0], kept[1])


def test_evaluate_gives_each_sample_its_draw_at_any_batch_size(tmp_path, images, monkeypatch):
    vlm = tiny.build("llava", seed=1, num_layers=4)
    from PIL import Image

    paths = []
    for i, im in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(im).save(paths[-1])
    samples = [Sample(id=str(i), image=paths[i % 3], question=QUESTIONS[i % 3], answer="red") for i in range(5)]
    seen = []
    real_run = prune.run

    def recording_run(*args, **kwargs):
        res = real_run(*args, **kwargs)
        seen.extend(tuple(c.tolist()) for c in res.kept[0])
        return res

    monkeypatch.setattr(prune, "run", recording_run)
    evaluate(vlm, samples, method="random", keep=0.25, batch_size=2, progress=False)
    by_two, seen[:] = list(seen), []
    evaluate(vlm, samples, method="random", keep=0.25, batch_size=5, progress=False)
    assert seen == by_two
    seen[:] = []
    evaluate(vlm, samples, method="random", keep=0.25, batch_size=5, progress=False, seed=1)
    assert seen != by_two
