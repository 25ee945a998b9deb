"""The token-inspection app: upload checks, and Streamlit's AppTest driving its widgets (issue 6)."""
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vtanalysis.errors import ImageError
from vtanalysis.inspection import MAX_PIXELS, decode_upload

PAGE = Path(__file__).resolve().parents[1] / "apps" / "inspect_tokens.py"


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_upload_text_renamed_png_is_refused_with_a_reason():
    with pytest.raises(ImageError, match="not a readable image.*PNG, JPEG"):
        decode_upload(b"just some text, not pixels\n" * 10, "notes.png")


def test_upload_50_megapixels_is_refused_before_decoding():
    big = _png(Image.new("L", (10_000, 5_000)))  # compresses to a few KB: only the header is read
    assert 10_000 * 5_000 > MAX_PIXELS
    with pytest.raises(ImageError, match="50 megapixels"):
        decode_upload(big, "huge.png")


def test_upload_roundtrips_a_real_image():
    arr = (np.arange(32 * 48 * 3) % 251).astype(np.uint8).reshape(32, 48, 3)
    assert np.array_equal(np.asarray(decode_upload(_png(Image.fromarray(arr)))), arr)


@pytest.fixture(scope="module")
def app():
    testing = pytest.importorskip("streamlit.testing.v1")
    at = testing.AppTest.from_file(str(PAGE), default_timeout=600)
    at.run()
    assert not at.exception, at.exception
    return at


def _kept(at) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("**Kept per stage:**")]


def test_app_shows_each_method_and_its_numbers(app):
    assert [h.value for h in app.subheader] == ["fastv", "adaptprune"]
    assert any("a CPU time is not a speed claim" in c.value for c in app.caption)  # what the ratios mean
    assert [m.label for m in app.metric] == ["FLOPs ratio", "Prefill latency ratio"] * 2
    assert all(0 < float(m.value) < 1 for m in app.metric if m.label == "FLOPs ratio")


def test_keep_ratio_changes_kept_counts_and_flops(app):
    before_kept, before_flops = _kept(app), [float(m.value) for m in app.metric if m.label == "FLOPs ratio"]
    app.slider(key="keep").set_value(0.5).run()
    assert not app.exception, app.exception
    after_kept, after_flops = _kept(app), [float(m.value) for m in app.metric if m.label == "FLOPs ratio"]
    assert after_kept != before_kept
    assert all(a > b for a, b in zip(after_flops, before_flops))  # keeping more tokens costs more


def test_method_choice_changes_the_panels(app):
    app.multiselect(key="methods").set_value(["random"]).run()
    assert not app.exception, app.exception
    assert [h.value for h in app.subheader] == ["random"]
    app.multiselect(key="methods").set_value([]).run()
    assert "Pick at least one pruning method" in app.warning[0].value


def test_attention_layer_slider_changes_the_heatmap(app):
    app.multiselect(key="methods").set_value(["fastv"]).run()
    captions = []
    for layer in (0, 1):
        app.slider(key="attn_layer").set_value(layer).run()
        assert not app.exception, app.exception
        captions.append([c.value for c in app.caption])
    assert captions[0] != captions[1]


def test_a_wrong_model_path_is_a_message_and_the_page_keeps_working():
    """Issue 20: a wrong model path gave a traceback; now the page names the problem and recovers."""
    testing = pytest.importorskip("streamlit.testing.v1")
    at = testing.AppTest.from_file(str(PAGE), default_timeout=600)
    at.run()
    at.text_input(key="model").set_value("no/such/model-folder").run()
    assert not at.exception, at.exception
    assert "cannot load a model from 'no/such/model-folder'" in at.error[0].value
    at.text_input(key="model").set_value("demo").run()
    assert not at.exception and not at.error and _kept(at)


def test_two_sessions_computing_at_once_get_their_own_overlays():
    """Issue 17: Streamlit serves each browser session from its own thread with one cached model.
    Two sessions with different settings, run at the same time, show what each shows alone."""
    import threading

    testing = pytest.importorskip("streamlit.testing.v1")

    def session(keep):
        at = testing.AppTest.from_file(str(PAGE), default_timeout=600)
        at.run()
        at.slider(key="keep").set_value(keep)
        return at

    def shown(at):
        return _kept(at), [m.value for m in at.metric if m.label == "FLOPs ratio"]

    alone = {}
    for keep in (0.1, 0.5):
        at = session(keep).run()
        assert not at.exception, at.exception
        alone[keep] = shown(at)
    assert alone[0.1] != alone[0.5]
    sessions = {keep: session(keep) for keep in (0.1, 0.5)}
    import streamlit as st

    st.cache_data.clear()  # the results, not the model: both sessions compute again, at once
    barrier = threading.Barrier(2)

    def rerun(at):
        barrier.wait()
        at.run()

    threads = [threading.Thread(target=rerun, args=(at,)) for at in sessions.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for keep, at in sessions.items():
        assert not at.exception, at.exception
        assert shown(at) == alone[keep]


def test_the_causal_toggle_shows_importance_beside_each_methods_kept_tokens(app):
    """Issue 39: a token's causal importance as an overlay beside a method's kept tokens."""
    app.multiselect(key="methods").set_value(["fastv", "pool"]).run()
    app.toggle(key="causal").set_value(True).run()
    assert not app.exception, app.exception
    assert any("KL divergence of the next-token distribution" in c.value for c in app.caption)
    app.toggle(key="causal").set_value(False).run()
    assert not any("KL divergence of the next-token distribution" in c.value for c in app.caption)


def test_causal_overlays_measure_the_kept_set():
    from vtanalysis import causal, prune
    from vtanalysis.inspection import causal_overlays, sample_images
    from vtanalysis.models import tiny

    vlm = tiny.build("llava", seed=1, num_layers=3)
    image, question = next(iter(sample_images().values()))
    out = causal_overlays(vlm, image, question, ["fastv"], 0.25)
    batch = vlm.prepare([image], [question])
    kept = prune.select(vlm, batch, "fastv", 0.25)[-1][0]
    rest = [c for c in range(out["n_image"]) if c not in set(kept.tolist())]
    assert out["fastv"]["kl_kept_only"] == pytest.approx(float(causal.ablate(vlm, batch, [rest]).kl[0]), abs=1e-6)
    assert out["fastv"]["overlay"][:4] == b"\x89PNG"
