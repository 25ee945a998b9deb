"""What `keep` means (fidelity issue, part 1): one meaning per method, keep=1.0 is unpruned.

- single-stage methods keep `keep_count(keep, n)` tokens, with their authors' rounding (FastV's
  and FasterVLM's code round: 58 of 576 at 0.1; AdaptPrune truncates: 57), tolerant of
  floating-point error (13/2880 -> 13);
- multi-stage methods (AdaptInfer, PyramidDrop, SparseVLM, VTW) treat `keep` as the image-token
  count averaged over the decoder layers (AdaptInfer: counted as its authors count it).
"""
import pytest

from vtanalysis import VTAError, prune
from vtanalysis.prune import adaptinfer
from vtanalysis.prune.budget import average_tokens, keep_count
from vtanalysis.prune.methods.adaptinfer import adaptinfer_plan
from vtanalysis.prune.methods.pyramiddrop import pyramid_plan
from vtanalysis.prune.methods.sparsevlm import sparsevlm_plan
from vtanalysis.prune.methods.vtw import vtw_plan


class Depth:
    def __init__(self, n):
        self.num_layers = n


def test_keep_count_rounding_and_floating_point():
    assert keep_count(0.1, 576) == 57 and keep_count(0.1, 576, "round") == 58
    assert keep_count(1.0, 576) == 576 and keep_count(64, 576) == 64 and keep_count(0.001, 100) == 1
    bad = [k for k in range(1, 2881) if keep_count(k / 2880, 2880) != k]
    assert bad == [], f"{len(bad)} ratios k/2880 lost a token"
    for wrong, msg in [(0.0, "outside"), (1.5, "outside"), (0, "positive"), (-3, "positive"), (577, "larger than the image")]:
        with pytest.raises(VTAError, match=msg):
            keep_count(wrong, 576)


def test_each_method_uses_its_authors_rounding():
    plan = lambda name: prune.get(name).plan(Depth(32), 576, 0.1)[0][1]  # noqa: E731
    assert plan("fastv") == 58 and plan("fastervlm") == 58 and plan("adaptprune") == 57


def test_average_tokens():
    assert average_tokens(576, [], 32) == 576
    assert average_tokens(100, [(8, 50), (16, 25), (24, 0)], 32) == (8 * 100 + 8 * 50 + 8 * 25) / 32


def test_adaptinfer_authors_count_reproduces_the_presets():
    """METHODS.md: budgets 128/64/48/32 are the per-stage counts averaged as the authors count them."""
    for budget, counts in adaptinfer.PRESETS_7B.items():
        assert adaptinfer_plan(Depth(32), 576, budget) == list(zip((2, 11, 21), counts))
        avg = adaptinfer.authors_average(576, list(zip((2, 11, 21), counts)), 32)
        assert abs(avg - budget) <= 1.0


@pytest.mark.parametrize("keep", [0.05, 0.25, 0.5, 0.75, 0.9])
def test_adaptinfer_keep_is_the_average_budget(keep):
    """Issue: keep 0.5 / 0.75 averaged 262 / 295 tokens instead of 288 / 432."""
    plan = adaptinfer_plan(Depth(32), 576, keep)
    counts = [c for _, c in plan]
    assert counts == sorted(counts, reverse=True) and max(counts) <= 576
    assert abs(adaptinfer.authors_average(576, plan, 32) - keep * 576) <= 1.0


@pytest.mark.parametrize("keep", [0.3, 0.47, 0.6, 0.9])
def test_pyramiddrop_keep_sets_lambda(keep):
    plan = pyramid_plan(Depth(32), 576, keep)
    assert [l for l, _ in plan] == [8, 16, 24]
    lam = plan[0][1] / 576
    assert plan[1][1] == pytest.approx(576 * lam**2, abs=3) and plan[2][1] == pytest.approx(576 * lam**3, abs=3)
    assert abs(average_tokens(576, plan, 32) - keep * 576) <= 2.0
    # the authors' default lambda = 0.5 is a budget of (1 + .5 + .25 + .125) / 4 = 0.469
    assert pyramid_plan(Depth(32), 576, 0.46875)[0][1] == 288
    with pytest.raises(VTAError, match="at least 0.250"):
        pyramid_plan(Depth(32), 576, 0.2)


@pytest.mark.parametrize("keep", [0.1, 0.25, 0.5])
def test_sparsevlm_keep_is_the_average_budget(keep):
    """Stages 3/7/16 (the authors score with layers 2/6/15 and prune their outputs); published
    tables as published, other budgets scaled to the average."""
    plan = sparsevlm_plan(Depth(32), 576, keep)
    assert [l for l, _ in plan] == [3, 7, 16]
    assert abs(average_tokens(576, plan, 32) - keep * 576) <= 1.0


def test_sparsevlm_published_tables():
    """Gumpest/SparseVLMs' per-budget tables: 192 -> 300/200/110, 128 -> 303/110/36, 64 -> 66/30/17."""
    for budget, counts in {192: [300, 200, 110], 128: [303, 110, 36], 64: [66, 30, 17]}.items():
        assert [c for _, c in sparsevlm_plan(Depth(32), 576, budget)] == counts


def test_vtw_keep_sets_the_withdrawal_layer():
    assert vtw_plan(Depth(32), 576, 0.5) == [(16, 0)]
    assert vtw_plan(Depth(32), 576, 15 / 32) == [(15, 0)]
    assert vtw_plan(Depth(32), 576, 0.5, layer=3) == [(3, 0)]
    assert average_tokens(576, vtw_plan(Depth(32), 576, 0.25), 32) == 0.25 * 576


class Qwen(Depth):
    class adapter:  # noqa: N801 - stands in for the Qwen2-VL adapter
        mrope = True


def test_adaptinfer_qwen2_vl_schedule():
    """METHODS.md (AdaptInfer, Qwen2-VL-2B): prune after layers 0 / 9 / 19 of 28 keeping 0.5 / 0.6 / 0.3
    of the tokens still there; that schedule's own average is its budget, other budgets scale it."""
    n = 1000
    preset = [500, 300, 90]  # int(1000 * .5), int(500 * .6), int(300 * .3)
    assert adaptinfer.chained_counts(n, adaptinfer.QWEN_RATIOS) == preset
    own = adaptinfer.authors_average(n, list(zip((1, 10, 20), preset)), 28)
    assert adaptinfer_plan(Qwen(28), n, own / n) == list(zip((1, 10, 20), preset))
    plan = adaptinfer_plan(Qwen(28), n, 0.15)
    assert [l for l, _ in plan] == [1, 10, 20]
    assert abs(adaptinfer.authors_average(n, plan, 28) - 150) <= 1.0
    # LLaVA keeps its own layers even with ratios given
    assert [l for l, _ in adaptinfer_plan(Depth(32), 576, 0.3, ratios=(0.5, 0.5, 0.5))] == [2, 11, 21]
    assert [c for _, c in adaptinfer_plan(Depth(32), 576, 0.3, ratios=(0.5, 0.5, 0.5))] == [288, 144, 72]
