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
