import numpy as np
import pytest

from vtanalysis.models import tiny

QUESTIONS = ["what color is the circle ?", "how many ?", "is there a small red square to the left of the blue star ?"]


@pytest.fixture(scope="session", params=tiny.FAMILIES)
def family_vlm(request):
    return tiny.build(request.param, seed=0)


@pytest.fixture(scope="session")
def images():
    """Three images of different sizes and aspect ratios (different token counts in anyres / dynamic models)."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, shape, dtype=np.uint8) for shape in [(40, 60, 3), (90, 50, 3), (64, 64, 3)]]


@pytest.fixture(scope="session")
def demo_untrained():
    """The demo model's architecture and processor with random weights (no training needed)."""
    from vtanalysis.models import demo

    return demo.untrained(seed=0)
