"""Analyses on inputs with a planted answer (issue 5): positional-bias maps (AdaptPrune Fig. 2),
inflection layers (AdaptInfer), saliency AUC / first-relevant / cover counts (AdaFV Fig. 2, 4)."""
import math

import numpy as np
import pytest
import torch

from vtanalysis.analysis import inflection, positional_bias, saliency
from vtanalysis.collect.dataset import MeanMaps, layer_shift
from vtanalysis.collect.record import SampleAttention
from vtanalysis.errors import VTAError
from vtanalysis.models.layout import Grid, TokenLayout

H, W, L, T = 6, 8, 5, 3


def planted_sample(motif: torch.Tensor, rng: torch.Generator) -> SampleAttention:
    """A record whose image attention at every layer and text row is `motif` [H, W] plus noise."""
    n = H * W
    rows = (motif.flatten() + 0.02 * torch.rand(L, T, n, generator=rng)) * 0.5 / (motif.sum() + 0.01 * n)
    layout = TokenLayout(seq_len=n + T + 2, first_position=0, image_positions=torch.arange(2, 2 + n),
                         text_positions=torch.arange(2 + n, 2 + n + T), grids=[Grid(0, "image", (H, W), 0, n)])
    return SampleAttention(rows, torch.full((L, T, T), 1.0 / T), layout, list(range(L)))


def bottom_motif() -> torch.Tensor:
    y = torch.arange(H, dtype=torch.float32)[:, None].expand(H, W)
    return torch.exp(y - H)  # attention piles up on the bottom rows, as LLaVA's does


def test_planted_positional_bias_is_recovered():
    rng = torch.Generator().manual_seed(0)
    maps = MeanMaps()
    for _ in range(40):
        maps.add(planted_sample(bottom_motif(), rng))
    mean = maps.means()[f"image_{H}x{W}"][0]  # last row, [L, H, W]
    r = positional_bias.map_correlation(mean, bottom_motif().expand(L, H, W))
    assert r.min() > 0.99
    assert positional_bias.layer_consistency(mean).min() > 0.99


def test_similarity_matrix_separates_motifs():
    motif = bottom_motif()
    other = torch.rand(H, W, generator=torch.Generator().manual_seed(1))
    names, sim = positional_bias.similarity_matrix({"a": motif.expand(L, H, W), "b": (2 * motif + 1).expand(L, H, W),
                                                    "c": other.expand(L, H, W)})
    assert names == ["a", "b", "c"]
    assert torch.allclose(sim.diagonal(), torch.ones(3))
    assert sim[0, 1] == pytest.approx(1.0, abs=1e-5)  # correlation ignores scale and offset
    assert abs(float(sim[0, 2])) < 0.9 and torch.equal(sim, sim.T)


def test_layer_shift_extremes():
    same = torch.tensor([[0.1, 0.2, 0.3, 0.4]] * 3)
    s = layer_shift(same, top=0.5)
    assert s["last_row_js"] == [0, 0, 0] and s["last_row_topk_overlap"] == [1, 1, 1]
    disjoint = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    s = layer_shift(disjoint, top=0.5)
    assert s["last_row_js"][1] == pytest.approx(math.log(2), abs=1e-6)
    assert s["last_row_topk_overlap"][1] == 0


def curve(breaks, values, L=32, noise=0.002, seed=0):
    """A step curve: `values[i]` from layer breaks[i-1] on, plus gaussian noise."""
    y = np.full(L, values[0], dtype=float)
    for b, v in zip(breaks, values[1:]):
        y[b:] = v
    return y + np.random.default_rng(seed).normal(0, noise, L)


@pytest.mark.parametrize("breaks", [[2, 11, 21], [8], [5, 20]])
def test_planted_change_points_are_found(breaks):
    y = curve(breaks, [0.1, 0.5, 0.3, 0.6][: len(breaks) + 1])
    found = inflection.change_points(y)
    assert [c.layer for c in found] == breaks
    assert all(c.confidence > 0.9 for c in found)


def test_kinks_are_found_within_one_layer():
    x = np.arange(32)
    y = np.where(x < 10, 0.02 * x, 0.2 - 0.01 * (x - 10)) + np.random.default_rng(0).normal(0, 0.001, 32)
    [c] = inflection.change_points(y)
    assert abs(c.layer - 10) <= 1


@pytest.mark.parametrize("y", [np.full(32, 0.3), curve([], [0.3], noise=0.01), 0.01 * np.arange(32) + curve([], [0.0])])
def test_no_change_points_on_flat_or_linear_curves(y):
    assert inflection.change_points(y) == []
    assert inflection.inflection_layers({"image_mass": y, "js": y, "topk_overlap": y}) == []


def test_inflection_layers_merge_curves_and_use_model_layer_numbers():
    curves = {"image_mass": curve([10], [0.5, 0.2]), "js": curve([11, 20], [0.1, 0.4, 0.1], seed=1),
              "layers": np.arange(32) + 100}
    layers = [c.layer for c in inflection.inflection_layers(curves)]
    assert layers in ([110, 120], [111, 120])


def test_schedule_meets_the_average_budget():
    n_layers, n_image, keep = 32, 576, 0.25  # ok-literal: LLaVA-1.5's count as a plain number in a test
    s = inflection.schedule_from_inflections([1, 10, 20], n_layers, n_image, keep)
    assert s["layers"] == [2, 11, 21]
    assert s["counts"] == sorted(s["counts"], reverse=True)
    spans = np.diff([*s["layers"], n_layers])
    average = (s["layers"][0] * n_image + np.dot(spans, s["counts"])) / n_layers
    assert average == pytest.approx(keep * n_image, rel=0.02)
    with pytest.raises(VTAError, match="budget"):
        inflection.schedule_from_inflections([20], n_layers, n_image, 0.1)
    with pytest.raises(VTAError, match="no inflection"):
        inflection.schedule_from_inflections([], n_layers, n_image, 0.1)


def test_auc_planted_saliency():
    """AdaFV Fig. 2: a saliency equal to the mask gives AUC 1, its negation 0, noise about 0.5."""
    rng = torch.Generator().manual_seed(0)
    labels = torch.rand(144, generator=rng) < 0.2
    assert saliency.roc_auc(labels.float(), labels) == 1.0
    assert saliency.roc_auc(-labels.float(), labels) == 0.0
    noise = [saliency.roc_auc(torch.rand(144, generator=rng), labels) for _ in range(200)]
    assert np.mean(noise) == pytest.approx(0.5, abs=0.02)
    assert math.isnan(saliency.roc_auc(torch.rand(5), torch.zeros(5, dtype=torch.bool)))


def test_first_relevant_and_cover_counts():
    """AdaFV Fig. 4: N is the rank of the first relevant token; cover needs every relevant one."""
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    labels = torch.tensor([False, False, True, False, True, False])
    assert saliency.first_relevant(scores, labels) == 3
    assert saliency.tokens_to_cover(scores, labels) == 5
    assert saliency.first_relevant(scores, ~labels) == 1


def test_relevant_tokens_follow_the_half_overlap_rule(demo_untrained):
    """The ground-truth path: patch labels from a pixel mask by the 50% rule, on the demo's 8-px grid."""
    vlm = demo_untrained
    batch = vlm.prepare([np.zeros((96, 96, 3), np.uint8)], ["what color is the circle ?"])
    patch = vlm.config.vision_config.patch_size
    mask = np.zeros((96, 96), bool)
    mask[patch:3 * patch, 2 * patch:5 * patch] = True  # rows 1-2, cols 2-4 fully
    mask[5 * patch:6 * patch, 0:patch // 2 + 1] = True  # 56% of patch (5, 0)
    mask[7 * patch:8 * patch, 0:patch // 2 - 1] = True  # 44% of patch (7, 0)
    got = saliency.relevant_tokens(vlm, batch.layouts[0], mask).reshape(12, 12)
    want = torch.zeros(12, 12, dtype=torch.bool)
    want[1:3, 2:5] = True
    want[5, 0] = True
    assert torch.equal(got, want)


def test_token_scores_match_their_definitions(demo_untrained):
    from tests.reference import eager_attentions, lm_inputs

    from vtanalysis.prune.methods.adafv import t2i_scores

    vlm = demo_untrained
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (96, 96, 3), dtype=np.uint8) for _ in range(2)]
    batch = vlm.prepare(images, ["what color is the circle ?", "is there a red square ?"])
    scores = saliency.token_scores(vlm, batch, layer=1)
    eager = eager_attentions(vlm, batch)
    embeds = lm_inputs(vlm, batch)[1]
    for b, lay in enumerate(batch.layouts):
        att = eager[1][b].mean(0)[lay.last_position, lay.image_positions]
        torch.testing.assert_close(scores[b]["llm-attention"], att.float(), atol=1e-5, rtol=1e-4)
        assert scores[b]["cls"].shape == (lay.n_image_tokens,)
        assert float(scores[b]["cls"].sum()) < 1.0  # [CLS]'s softmax share on the patches (its own column left out)
        text, image = embeds[b, lay.text_positions], embeds[b, lay.image_positions]
        torch.testing.assert_close(scores[b]["t2i-cosine"], t2i_scores(text, image), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(scores[b]["t2i-inner"], saliency.inner_product_scores(text, image), atol=1e-5, rtol=1e-4)


def test_score_against_masks_counts_skips(demo_untrained, tmp_path):
    from vtanalysis.data import shapes
    from vtanalysis.data.dataset import read_samples

    shapes.write_dataset(tmp_path, 2, seed=3, progress=False)
    samples = read_samples(tmp_path)[:4]
    masks = [shapes.target_mask(s) for s in samples]
    masks[0] = np.zeros_like(masks[0])  # no relevant token: skipped, not scored
    out = saliency.score_against_masks(demo_untrained, samples, masks, progress=False)
    assert samples[0].id in out["skipped"]
    assert len(out["rows"]) + len(out["skipped"]) == 4
    for row in out["rows"]:
        for rule in saliency.RULES:
            assert 1 <= row[f"{rule}/first_relevant"] <= row[f"{rule}/tokens_to_cover"] <= row["n_image_tokens"]
    with pytest.raises(VTAError, match="unknown scoring rule"):
        saliency.token_scores(demo_untrained, demo_untrained.prepare([np.zeros((96, 96, 3), np.uint8)], ["x"]),
                              rules=["bogus"])


def test_roc_auc_and_noise_level_equal_their_definitions():
    """AdaFV Fig. 2's AUC is P(relevant > irrelevant) with ties 1/2 (scipy ranks now; the pairwise
    count is the definition), and the inflection detector's noise sd is the normal-scaled MAD of
    second differences over sqrt(6)."""
    import numpy as np

    from vtanalysis.analysis import inflection

    g = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 6, (80,), generator=g).double()  # many ties
    labels = torch.rand(80, generator=g) < 0.3
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()).mean()
    assert saliency.roc_auc(scores, labels) == pytest.approx(float(pairwise), abs=1e-12)
    y = np.cumsum(np.random.default_rng(0).normal(size=40))
    d2 = np.diff(y, 2)
    assert inflection.noise_level(y) == pytest.approx(1.482602218505602 * np.median(np.abs(d2 - np.median(d2))) / math.sqrt(6))
