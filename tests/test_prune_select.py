"""Property tests of the pure selection functions (pruning issue, 'Done when' 2).

Equations protected: FastV top-k; AdaptPrune Sec. 4.1 (Gaussian correction) and Sec. 4.3 (adaptive
NMS), Table 4 ablations; AdaFV eqs. 4 and 7-11 (SACMAM budget split); AdaptInfer text prior and
image score (METHODS.md, authors' code).
"""
import itertools

import pytest
import torch

from vtanalysis.prune import adafv, adaptinfer, adaptprune, fastv

GRIDS = [(24, 24), (12, 12), (6, 9)]


def rand(n, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g), torch.randn(n, d, generator=g)


def assert_valid(idx, keep, n):
    assert idx.dtype == torch.long and idx.numel() == keep
    assert idx.unique().numel() == keep, "duplicates"
    assert torch.equal(idx, idx.sort().values) and 0 <= int(idx.min()) and int(idx.max()) < n


# -- FastV --------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [1, 57, 288, 576])
def test_fastv_is_top_k_and_shift_invariant(keep):
    s, _ = rand(576)
    idx = fastv.select(s, keep)
    assert_valid(idx, keep, 576)
    assert set(idx.tolist()) == set(torch.topk(s, keep).indices.tolist())
    assert torch.equal(fastv.select(s + 5.0, keep), idx) and torch.equal(fastv.select(s * 3.0, keep), idx)


# -- AdaptPrune ---------------------------------------------------------------------------------
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("knobs", [{}, {"sigma_s": None}, {"center_sigma": None}, {"window": 2.0, "sigma_d": 3.0}])
def test_adaptive_nms_matches_the_per_step_reference(grid, knobs):
    n = grid[0] * grid[1]
    s, k = rand(n, seed=n)
    keep = max(1, n // 10)
    fast = adaptprune.adaptive_nms(s, k, grid, keep, **knobs)
    assert_valid(fast, keep, n)
    assert torch.equal(fast, adaptprune.adaptive_nms_reference(s, k, grid, keep, **knobs))


@pytest.mark.parametrize("grid", GRIDS)
def test_sigma_d_to_zero_is_corrected_top_k(grid):
    """Table 4 row (b): correction only."""
    n = grid[0] * grid[1]
    s, k = rand(n, seed=1)
    keep = n // 5
    corrected = s * adaptprune.center_prior(grid, 12.0).flatten()
    for sigma_d in (0.0, 1e-4):
        got = adaptprune.adaptive_nms(s, k, grid, keep, sigma_d=sigma_d)
        assert set(got.tolist()) == set(torch.topk(corrected, keep).indices.tolist())
    # and without the correction it is FastV (Table 4 row (a))
    plain = adaptprune.adaptive_nms(s, k, grid, keep, sigma_d=0.0, center_sigma=None)
    assert torch.equal(plain, fastv.select(s, keep))


def test_center_prior_shape_and_peak():
    prior = adaptprune.center_prior((24, 24), 12.0)
    assert prior.shape == (24, 24) and prior.max() == 1.0
    assert prior[12, 12] == 1.0 and prior[0, 0] < prior[6, 6] < prior[12, 12]


def test_nms_spreads_picks_and_is_scale_invariant():
    grid = (12, 12)
    s, k = rand(144, seed=3)
    # suppression of every 8-neighbour (window 1.5, flat distance decay, no similarity term)
    idx = adaptprune.adaptive_nms(s, k, grid, 9, sigma_d=100.0, sigma_s=None, window=1.5, center_sigma=None)
    ys, xs = idx // 12, idx % 12
    for a, b in itertools.combinations(range(9), 2):
        assert max(abs(int(ys[a] - ys[b])), abs(int(xs[a] - xs[b]))) > 1
    full = adaptprune.adaptive_nms(s, k, grid, 20)
    assert torch.equal(adaptprune.adaptive_nms(s * 7.0, k * 2.0, grid, 20), full)


def test_nms_never_repeats_a_pick_on_degenerate_scores():
    grid = (8, 8)
    _, k = rand(64)
    idx = adaptprune.adaptive_nms(torch.zeros(64), torch.ones(64, 4), grid, 64)
    assert_valid(idx, 64, 64)


def test_multi_grid_select_keeps_one_budget_and_no_cross_grid_suppression():
    s, k = rand(16 + 48 + 6, seed=4)
    grids = [(0, 4, 4), (16, 6, 8)]  # + 6 newline columns outside any grid
    idx = adaptprune.select(s, k, grids, keep=20)
    assert_valid(idx, 20, s.numel())
    # picks inside a grid are that grid's own NMS picks (suppression stays inside the grid)
    tiles = adaptprune.adaptive_nms(s[16:64], k[16:64], (6, 8), 20)
    assert set(i - 16 for i in idx.tolist() if 16 <= i < 64) <= set(tiles.tolist())
    one = adaptprune.select(s[:16], k[:16], [(0, 4, 4)], keep=5)
    assert torch.equal(one, adaptprune.adaptive_nms(s[:16], k[:16], (4, 4), 5))


# -- AdaFV --------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [4, 10, 57, 144])
def test_adafv_respects_budget_and_min_share(keep):
    t2i, _ = rand(144, seed=5)
    sal, _ = rand(144, seed=6)
    idx = adafv.select(t2i, sal, keep)
    assert_valid(idx, keep, 144)
    floor = int(keep * 0.25)
    chosen = set(idx.tolist())
    assert set(torch.topk(t2i, floor).indices.tolist()) <= chosen if floor else True
    assert set(torch.topk(sal, floor).indices.tolist()) <= chosen if floor else True


def test_adafv_identical_rankings_fill_duplicates_from_the_next_best():
    s, _ = rand(100, seed=7)
    idx = adafv.select(s, s.clone(), 30)
    assert set(idx.tolist()) == set(torch.topk(s, 30).indices.tolist())


def test_adafv_budget_split_maximises_the_product():
    a = torch.tensor([0.5, 0.2, 0.1, 0.05])
    b = torch.tensor([0.3, 0.29, 0.28, 0.01])
    for r in range(0, 5):
        best = max(range(r + 1), key=lambda k1: float(a[:k1].sum() * b[:r - k1].sum()) if k1 <= 4 and r - k1 <= 4 else -1)
        got = adafv.split_budget(a, b, r)
        assert float(a[:got].sum() * b[:r - got].sum()) == pytest.approx(float(a[:best].sum() * b[:r - best].sum()))


def test_t2i_scores_eq4():
    g = torch.Generator().manual_seed(0)
    text, img = torch.randn(5, 8, generator=g), torch.randn(30, 8, generator=g)
    got = adafv.t2i_scores(text, img)
    cos = torch.nn.functional.cosine_similarity(text[:, None], img[None], dim=-1)
    torch.testing.assert_close(got, torch.softmax(100 * cos, -1).max(0).values)


# -- AdaptInfer ---------------------------------------------------------------------------------
def causal_attention(h, s, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(h, s, s, generator=g).masked_fill(torch.triu(torch.ones(s, s, dtype=torch.bool), 1), -torch.inf)
    return torch.softmax(logits, -1)


def test_adaptinfer_scores_match_the_written_sums():
    attn = causal_attention(3, 20)
    text, image = torch.arange(12, 20), torch.arange(2, 10)
    got = adaptinfer.scores(attn, text, image)
    want = torch.zeros(len(image))
    for hh in range(3):
        for j in text.tolist():
            w = sum(attn[hh, i, j] for i in text.tolist()) + sum(attn[hh, j, i] for i in text.tolist()) - attn[hh, j, j]
            want += w * attn[hh, j, image]
    torch.testing.assert_close(got, want)
    assert got.shape == (8,)


def test_adaptinfer_uniform_mix_weights_text_tokens_equally():
    """The optional uniform mix lambda * w + (1 - lambda) * mean(w), with mean(w) one scalar over all
    heads and text tokens (the fidelity audit of the authors' code; a per-head mean differed in 46/50 sets)."""
    attn = causal_attention(2, 16, seed=1)
    text, image = torch.arange(10, 16), torch.arange(1, 9)
    flat = adaptinfer.scores(attn, text, image, mix=0.0)
    w = adaptinfer.text_prior(attn[:, text][:, :, text]).mean()  # one scalar over heads and tokens
    torch.testing.assert_close(flat, w * attn[:, text][:, :, image].sum(dim=(0, 1)))
    half = adaptinfer.scores(attn, text, image, mix=0.5)
    prior = adaptinfer.text_prior(attn[:, text][:, :, text])
    torch.testing.assert_close(half, torch.einsum("ht,htv->v", 0.5 * prior + 0.5 * prior.mean(),
                                                  attn[:, text][:, :, image]))


# -- FitPrune ----------------------------------------------------------------------------------
def test_fitprune_equals_the_authors_rule():
    """ywh187/FitPrune, LLaVA_1.5/llava/model/language_model/modeling_llama.py, `LlamaAttention.forward`:
    hm = attn.max(heads); self = (hm[img, img] / n).sum(queries); cross = hm[after image, img].sum(queries);
    the `delete` lowest of cross * self are dropped. Transcribed on a random causal attention map."""
    from vtanalysis.prune.engine import StageInputs
    from vtanalysis.prune.methods.table5 import choose_fitprune

    heads, prefix, n, n_text = 4, 5, 30, 7
    attn = causal_attention(heads, prefix + n + n_text, seed=5)  # the old rule (head max last) fails all three
    img = torch.arange(prefix, prefix + n)
    text = torch.arange(prefix + n, prefix + n + n_text)
    for delete in (3, 15, 27):
        hm = attn.max(dim=0).values
        self_term = (hm[img][:, img] / n).sum(dim=0)
        cross = hm[text][:, img].sum(dim=0)
        dropped = torch.sort(cross * self_term).indices[:delete]
        want = torch.ones(n, dtype=torch.bool)
        want[dropped] = False
        inputs = StageInputs(columns=torch.arange(n), grids=None, newline=torch.zeros(n, dtype=torch.bool),
                             text_to_image=attn[:, text][:, :, img], image_to_image=attn[:, img][:, :, img])
        assert torch.equal(choose_fitprune(inputs, n - delete, 0), want.nonzero().flatten())
