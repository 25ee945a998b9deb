"""`causal.importance` (issue 39 part 2): the effect of ablating each image token (or block) alone,
candidates batched, layers < l recorded once. arXiv 2512.07580 removes tokens from layer l on;
arXiv 2410.07149 mean-ablates them at the input."""
import pytest
import torch

from conftest import QUESTIONS
from vtanalysis import VTAError, causal
from vtanalysis.causal.importance import candidates
from vtanalysis.causal.replay import record, replay
from vtanalysis.models import tiny
from vtanalysis.perf import HostRoundTrips


def one_alone(batch, b: int, cols) -> list[torch.Tensor]:
    return [torch.as_tensor(cols) if i == b else torch.tensor([], dtype=torch.long) for i in range(len(batch))]


@pytest.mark.parametrize("family", ["llava", "llava-next", "qwen2-vl", "gemma3", "qwen3-vl"])
@pytest.mark.parametrize("how, layer", [("drop", 0), ("drop", 2), ("mask", 3), ("mean", 0), ("zero", 0)])
def test_batched_importance_equals_one_ablation_per_candidate(family, how, layer, images):
    vlm = tiny.build(family, seed=1, num_layers=4)
    batch = vlm.prepare(images[:2], QUESTIONS[:2])  # two sizes: padding, different token counts
    ref = causal.reference(vlm, batch, max_new_tokens=3)
    kl = causal.importance(vlm, batch, how, layer, ref=ref)
    drop = causal.importance(vlm, batch, how, layer, ref=ref, measure="logprob_drop")
    for b, lay in enumerate(batch.layouts):
        n = lay.n_image_tokens
        assert kl[b, :n].isfinite().all() and kl[b, n:].isnan().all()
        for i in (0, n // 2, n - 1):
            alone = causal.ablate(vlm, batch, one_alone(batch, b, [i]), how, layer, ref=ref)
            assert torch.allclose(kl[b, i], alone.kl[b], atol=2e-5)
            assert torch.allclose(drop[b, i], alone.logprob_drop[b], atol=2e-5)
    assert (kl[~kl.isnan()] > -1e-5).all() and kl.nan_to_num().max() > 1e-4


@pytest.mark.parametrize("family", ["llava", "qwen3-vl"])
def test_reusing_the_layers_before_l_equals_recomputing_them(family, images):
    vlm = tiny.build(family, seed=2, num_layers=4)
    batch = vlm.prepare(images[:1], QUESTIONS[:1])
    ref = causal.reference(vlm, batch, max_new_tokens=3)
    sets = candidates(batch.layouts[0], 1)[:6]
    args = (ref.log_probs[0], ref.ids[0], ref.mask[0])
    with torch.inference_mode():
        reused = replay(vlm, record(vlm, batch, ref, 2)[0], sets, "mask", *args)
        recomputed = replay(vlm, record(vlm, batch, ref, 0)[0], sets, "mask", *args, mask_from=2)
    for a, b in zip(reused, recomputed):
        assert torch.allclose(a, b, atol=1e-5)


def test_a_block_is_ablated_together_and_its_tokens_share_its_effect(images):
    vlm = tiny.build("llava", seed=3, num_layers=3)
    batch = vlm.prepare(images[:1], QUESTIONS[:1])
    grid = batch.layouts[0].grids[0]
    ref = causal.reference(vlm, batch, max_new_tokens=2)
    blocks = causal.importance(vlm, batch, "drop", 1, block=2, ref=ref)[0]
    first = torch.tensor([0, 1, grid.shape[1], grid.shape[1] + 1])  # the top-left 2x2 block
    assert torch.equal(blocks[first], blocks[0].expand(4))
    together = causal.ablate(vlm, batch, [first], "drop", 1, ref=ref)
    assert torch.allclose(blocks[0], together.kl[0], atol=2e-5)
    assert len(set(blocks.tolist())) == (grid.shape[0] // 2) * (grid.shape[1] // 2)


def test_newline_tokens_are_candidates_of_their_own_in_blocks(images):
    vlm = tiny.build("llava-next", seed=3, num_layers=3)
    lay = vlm.prepare(images[:1], QUESTIONS[:1]).layouts[0]
    sets = candidates(lay, 2)
    assert lay.newline_columns and torch.equal(sets.sum(0), torch.ones(lay.n_image_tokens, dtype=torch.long))
    for col in lay.newline_columns:
        assert sets[sets[:, col]].sum() == 1


def test_chunks_change_nothing_and_no_host_round_trip_is_made_per_candidate(images):
    vlm = tiny.build("llava", seed=4, num_layers=3)
    batch = vlm.prepare(images[:1], QUESTIONS[:1])
    ref = causal.reference(vlm, batch, max_new_tokens=2)
    whole = causal.importance(vlm, batch, ref=ref)
    trips = []
    for block in (1, 4):  # 64 and 4 candidates, one per forward
        with HostRoundTrips() as counted:
            one_by_one = causal.importance(vlm, batch, ref=ref, block=block, chunk=1)
        trips.append(counted.count)
        if block == 1:
            assert torch.allclose(one_by_one, whole, atol=1e-5)
    assert trips[0] == trips[1]


@pytest.mark.parametrize("kwargs, says", [
    (dict(how="erase"), "how='erase'"), (dict(measure="acc"), "measure='acc'"), (dict(block=0), "block=0"),
    (dict(how="zero", layer=1), "use layer=0"), (dict(layer=9), "layer 9"),
])
def test_bad_arguments_are_named_errors(kwargs, says, images):
    vlm = tiny.build("llava", seed=5, num_layers=3)
    batch = vlm.prepare(images[:1], QUESTIONS[:1])
    with pytest.raises(VTAError) as err:
        causal.importance(vlm, batch, **kwargs)
    assert says in str(err.value)
