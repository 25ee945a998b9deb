"""Issue 14: the intervals and verdicts behind `findings.md` (`analysis.stats`, `vtanalysis.experiments.findings`)."""
import math

import numpy as np
import pytest

from vtanalysis.analysis.stats import mean_interval, paired, verdict, wilson
from vtanalysis.experiments.findings import compare


def test_wilson_matches_the_textbook_values():
    """Wilson 95 % interval of 8/10 is [0.490, 0.943] and of 0/20 is [0, 0.161] (Agresti & Coull 1998)."""
    assert wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson(0, 20) == pytest.approx((0.0, 0.1611), abs=1e-4)
    low, high = wilson(200, 400)  # the target: +-0.05 at 400 samples, the widest case p = 0.5
    assert high - low <= 0.1


def test_pairing_removes_the_shared_variance():
    rng = np.random.default_rng(0)
    hard = rng.random(400) < 0.5  # per-sample difficulty shared by both runs
    a, b = hard.astype(float), hard.astype(float)
    b[:20] = 1 - b[:20]
    d, low, high, n = paired(a, b)
    assert n == 400 and low <= d <= high
    assert high - low < 0.1  # far narrower than two independent +-0.05 intervals around 0.5
    with pytest.raises(ValueError, match="same samples"):
        paired(a, b[:10])
    assert math.isnan(mean_interval([math.nan])[0])


def test_verdicts():
    assert verdict(0.01, 0.05) == "reproduced"
    assert verdict(-0.01, 0.05) == "inconclusive"
    assert verdict(-0.01, 0.05, at_least=True) == "reproduced"  # no deficit beyond the 0.02 margin
    assert verdict(-0.05, 0.05, at_least=True) == "inconclusive"
    assert verdict(-0.08, -0.01, at_least=True) == "refuted"


def test_a_claim_is_refuted_when_the_data_say_so():
    """A method that loses on every sample must come out refuted, never inconclusive or reproduced."""
    samples = list(range(60))
    win = {"method": "a", "hits": [1] * 60, "flops_ratio": 0.3}
    lose = {"method": "b", "hits": [1] * 10 + [0] * 50, "flops_ratio": 0.3}
    assert compare("a > b", "test", win, lose, at_least=False, samples=samples)["verdict"] == "reproduced"
    assert compare("b > a", "test", lose, win, at_least=False, samples=samples)["verdict"] == "refuted"
    only_first = compare("b >= a on the first ten", "test", lose, win, at_least=True, samples=samples,
                         only=lambda s: s < 10)
    assert only_first["n"] == 10 and only_first["verdict"] == "reproduced"


def causal_result(question_effect, last_effect, fastv, random, agreement=None):
    """A `experiments.causal` result with the given per-sample knockout and horizon numbers."""
    return {"keep": 0.1, "layers": list(range(len(fastv[0]))), "margin": 0.05, "samples": len(fastv),
            "knockout": {"window": 1, "starts": list(range(len(question_effect[0]))),
                         "effect": {"image->question": question_effect, "image->last": last_effect}},
            "horizon": {"fastv": {"effect": fastv, "random": random,
                                  "horizon": horizon_of(fastv, random)}},
            "agreement": agreement or {}}


def horizon_of(fastv, random):
    import torch

    from vtanalysis.causal.horizon import first_no_better
    f, r = torch.tensor(fastv), torch.tensor(random)
    return first_no_better(r.mean(0) - f.mean(0), r.mean(0), 0.05)


def test_causal_claims_follow_the_stated_rules():
    """2411.18620's route through the question (refuted when image -> question never reaches 5 % of
    image -> last's effect), 2512.07580's horizon, and 'beats random' on the causal effect."""
    from vtanalysis.experiments.findings import causal_rows

    rng = np.random.default_rng(0)
    early = [[1.0 + 0.1 * rng.random(), 0.2, 0.0, 0.0] for _ in range(12)]  # image -> question: early layers
    late = [[0.0, 0.1, 1.0 + 0.1 * rng.random(), 0.5] for _ in range(12)]
    fastv = [[0.2 + 0.05 * rng.random(), 0.3, 0.9, 0.5] for _ in range(12)]  # better than random, then equal
    random = [[1.5 + 0.05 * rng.random(), 1.4, 0.9, 0.5] for _ in range(12)]
    agreement = {"good": {"effect": [0.1 + 0.01 * i for i in range(12)], "random": [1.0 + 0.01 * i for i in range(12)],
                          "oracle": [0.0] * 12, "recall": [0.5] * 12}}
    rows = {r["source"]: r for r in causal_rows(causal_result(early, late, fastv, random, agreement))}
    assert rows["2411.18620"]["verdict"] == "reproduced"
    assert rows["2512.07580"]["verdict"] == "reproduced" and "horizon layer 2" in rows["2512.07580"]["measured"]
    assert rows["2502.11501; causal (issue 39)"]["verdict"] == "reproduced"
    # ratio of means: (1.055 - 0.155) / (1.055 - 0)
    assert "share of the oracle recovered 0.853" in rows["2502.11501; causal (issue 39)"]["measured"]
    silent = [[0.001, 0.0, 0.0, 0.0] for _ in range(12)]
    assert {r["source"]: r for r in causal_rows(causal_result(silent, late, fastv, random))}["2411.18620"]["verdict"] \
        == "refuted"
    reversed_ = {r["source"]: r for r in causal_rows(causal_result(late, early, fastv, random))}
    assert reversed_["2411.18620"]["verdict"] == "refuted"
    always_better = [[r - 1.0 for r in row] for row in random]
    assert {r["source"]: r for r in causal_rows(causal_result(early, late, always_better, random))}["2512.07580"][
        "verdict"] == "refuted"


def test_no_inflection_on_a_model_too_shallow_to_show_one_is_not_testable_not_refuted():
    """Issue 43: a 4-layer model has 3 layer-to-layer points, fewer than two segments of 2 need."""
    from types import SimpleNamespace

    from vtanalysis.experiments.findings import _schedule_rows, markdown

    result = {"inflections": [], "samples": 40, "n_image_tokens": 144}
    shallow = SimpleNamespace(vlm=SimpleNamespace(num_layers=4))
    row = _schedule_rows(shallow, result)[0]
    assert row["verdict"] == "not testable" and "3 points" in row["measured"]
    deep = SimpleNamespace(vlm=SimpleNamespace(num_layers=16))
    assert _schedule_rows(deep, result)[0]["verdict"] == "refuted"
    text = markdown([row], "demo", 40)
    assert "lower end above -0.02" in text and "**not testable**" in text  # every rule is in the file


def test_a_change_point_the_control_shares_is_not_a_finding():
    """Issue 42: an inflection at a layer where the model before training (the control) already has one
    comes from how the model was made; it is reported apart, never as the AdaptInfer finding, and the
    schedule row is built only from the model's own change points."""
    from types import SimpleNamespace

    from vtanalysis.experiments.findings import _schedule_rows

    ctx = SimpleNamespace(vlm=SimpleNamespace(num_layers=16))
    control = {"name": "demo-grown", "inflections": [{"layer": 8.0, "confidence": 0.9, "curve": "js"}]}
    shared = {"layer": 9.0, "confidence": 0.8, "curve": "js", "in_control": True}
    result = {"inflections": [shared], "control": control, "samples": 40, "n_image_tokens": 144}
    rows = _schedule_rows(ctx, result)
    assert len(rows) == 1 and rows[0]["verdict"] == "inconclusive"
    assert "inflection layers (confidence): none" in rows[0]["measured"]
    assert "demo-grown has change points at 8" in rows[0]["measured"] and rows[0]["measured"].endswith(": 9")
    even = {"layer": 7.0, "confidence": 0.95, "curve": "image_mass", "in_control": False}  # 16 / 2 - 1: no control
    rows = _schedule_rows(ctx, {**result, "inflections": [even, shared]})
    assert rows[0]["verdict"] == "reproduced" and rows[0]["measured"].startswith("inflection layers (confidence): 7 ")
    assert rows[1]["measured"] == "the inflection layers [7] are the evenly spaced ones: no control"  # 9 left out


def test_a_schedule_the_control_cannot_meet_is_named_as_the_controls():
    """AdaptInfer schedule row: keep 0.25 of 144 tokens averages 36 per layer, so a control whose first
    stage starts after layer 7 (72 on average already) has no schedule. The row must say that the
    evenly spaced control failed, not the schedule at the model's inflection layer (which exists)."""
    from types import SimpleNamespace

    from vtanalysis.experiments.findings import _schedule_rows

    ctx = SimpleNamespace(vlm=SimpleNamespace(num_layers=16))
    early = {"layer": 1.0, "confidence": 0.9, "curve": "image_mass", "in_control": False}
    rows = _schedule_rows(ctx, {"inflections": [early], "control": None, "samples": 40, "n_image_tokens": 144})
    assert rows[1]["verdict"] == "inconclusive"
    assert rows[1]["measured"].startswith("no schedule of the evenly spaced control (after layers [7]): budget 36")
