"""The docs: generated reference pages match the code, the README stays short, links resolve.

The site itself is built by `.ci/run` (`mkdocs build --strict`); these checks need no mkdocs.
"""
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_LIMIT = 8192  # bytes (issue 41)


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_reference_pages_are_up_to_date(tmp_path):
    gen = _generator()
    written = gen.generate(tmp_path)
    assert {p.name for p in written} == set(gen.PAGES)
    stale = []
    for fresh in written:
        committed = DOCS / "reference" / fresh.name
        if not committed.is_file() or committed.read_text() != fresh.read_text():
            stale.append(f"docs/reference/{fresh.name}")
    assert not stale, (f"generated pages out of date with the code: {', '.join(stale)}. Regenerate them with "
                       f"`{gen.COMMAND}` and commit the result.")


def test_generated_pages_list_every_registered_name():
    """What the pages are generated from is complete: every shipped method, family and figure."""
    from vtanalysis import figures, prune
    from vtanalysis.models.registry import ADAPTERS
    from vtanalysis.prune import plugins

    gen = _generator()
    shipped = {m.name for _, _, methods in gen.shipped_methods() for m in methods}
    outside = {n for n in prune.methods() if prune.get(n).choose.__module__.split(".")[:2] != ["vtanalysis", "prune"]}
    assert shipped == set(prune.methods()) - outside, "a method file registers a name the generator cannot read"
    assert [cls.family for cls, _ in gen.family_rows()] == [a.family for a in ADAPTERS]
    assert [name for name, _ in gen.figure_entries()] == list(figures.FIGURES)
    assert all(doc for _, doc in gen.figure_entries()), "every figure needs a description"
    assert plugins.GROUP == "vtanalysis.methods"  # the entry-point group the how-to names


def test_readme_is_short():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes; keep it <= {README_LIMIT} and move detail into docs/."


def _markdown_files():
    return [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted(DOCS.rglob("*.md"))]


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _links(text: str) -> list[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold no links
    text = re.sub(r"`[^`\n]*`", "", text)
    return LINK.findall(text)


@pytest.mark.parametrize("page", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(page):
    missing = []
    for target in _links(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        path = target.split("#")[0]
        if not (page.parent / path).exists():
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_bundled_demo_scene_is_the_generated_scene():
    """The README's first example runs on docs/assets/demo-scene-3.png: held-out scene 3 of `data.shapes`."""
    from PIL import Image

    from vtanalysis.data import shapes

    image = np.asarray(Image.open(DOCS / "assets" / "demo-scene-3.png").convert("RGB"))
    assert np.array_equal(image, shapes.scene(3).image)
    assert "what color is the triangle ?" in [q.question for q in shapes.questions(shapes.scene(3), 3)]
