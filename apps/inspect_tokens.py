"""Interactive token-overlay inspector: `vtanalysis app` (or `streamlit run apps/inspect_tokens.py`).

Pick an image (bundled or uploaded), a question, a model, up to two pruning methods, a keep ratio
and a pruning layer; see which image tokens each method keeps, its answer beside the unpruned
one, kept counts per stage, FLOPs and prefill-latency ratios, the last prompt token's attention
over the image per layer, and the text prior (which words guide a text-guided selection).
The computation lives in `vtanalysis.inspection`; this file is the page.
"""
import io

import matplotlib

matplotlib.use("Agg")  # the app renders figures to PNG bytes; the library never picks a backend

import numpy as np
import pandas as pd
import streamlit as st

from vtanalysis import prune
from vtanalysis.errors import VTAError
from vtanalysis.inspection import (MAX_UPLOAD_MB, attention, causal_overlays, compare, decode_upload, heatmap_png,
                                   sample_images)
from vtanalysis.models import demo, load_vlm

st.set_page_config(page_title="vtanalysis token inspector", layout="wide")


@st.cache_resource(show_spinner="Loading the model ...")
def model(name: str):
    return load_vlm(name)


@st.cache_resource
def samples():
    return sample_images()


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# Cached on the image's bytes and every knob, so moving one widget reruns only what it changes.
@st.cache_data(show_spinner=False, max_entries=64)
def cached_compare(name: str, image: bytes, question: str, methods: tuple, keep: float, layer):
    bar = st.progress(0.0, text="pruning ...")
    out = compare(model(name), decode_upload(image), question, list(methods), keep, layer,
                  progress=lambda f, text: bar.progress(f, text=text))
    bar.empty()
    return out


@st.cache_data(show_spinner="Ablating each image token ...", max_entries=32)
def cached_causal(name: str, image: bytes, question: str, methods: tuple, keep: float):
    return causal_overlays(model(name), decode_upload(image), question, list(methods), keep)


@st.cache_data(show_spinner="Recording attention ...", max_entries=64)
def cached_attention(name: str, image: bytes, question: str):
    return attention(model(name), decode_upload(image), question)


st.title("Which image tokens does pruning keep?")
side = st.sidebar
name = side.text_input("Model (bundled name, Hugging Face id or local folder)",
                       "demo" if demo.available() else "tiny-llava", key="model")
source = side.radio("Image", ["bundled sample", "upload"], key="source", horizontal=True)
bundled = samples()
if source == "upload":
    upload = side.file_uploader(f"Image file (at most {MAX_UPLOAD_MB} MB)", type=["png", "jpg", "jpeg", "bmp", "webp"],
                                key="upload")
    if upload is None:
        st.info("Upload an image, or switch to a bundled sample.")
        st.stop()
    image_bytes, default_question = upload.getvalue(), "what is in the image ?"
    try:
        image = decode_upload(image_bytes, upload.name)
    except VTAError as err:
        st.error(str(err))
        st.stop()
    image_bytes = png_bytes(image)
else:
    pick = side.selectbox("Sample", list(bundled), key="sample")
    image, default_question = bundled[pick]
    image_bytes = png_bytes(image)
question = side.text_input("Question", default_question, key="question")
methods = side.multiselect("Pruning methods (one or two)", prune.methods(), ["fastv", "adaptprune"],
                           max_selections=2, key="methods")
keep = side.slider("Keep ratio of image tokens", 0.05, 1.0, 0.25, 0.05, key="keep")

try:
    vlm = model(name)
except VTAError as err:
    st.error(str(err))
    st.stop()
layer_choice = side.selectbox("Pruning layer K (LLM methods)", ["method default", *range(1, vlm.num_layers)],
                              key="layer")
layer = None if layer_choice == "method default" else int(layer_choice)
if not methods:
    st.warning("Pick at least one pruning method in the sidebar.")
    st.stop()

try:
    results = cached_compare(name, image_bytes, question, tuple(methods), float(keep), layer)
except VTAError as err:
    st.error(str(err))
    st.stop()

base = results["unpruned"]
st.markdown(f"**Question:** {question}  \n**Unpruned answer:** `{base['answer']}` "
            f"({base['n_image']} image tokens, prefill {base['prefill_s'] * 1000:.1f} ms)")
for col, method in zip(st.columns(len(methods)), methods):
    r = results[method]
    with col:
        st.subheader(method)
        st.image(r["overlay"], caption=f"{method}: kept tokens bright, dropped ones dimmed")
        st.markdown(f"**Answer:** `{r['answer']}`" + (" (same as unpruned)" if r["answer"] == base["answer"] else
                                                     " (differs from unpruned)"))
        stages = ", ".join(f"layer {k}: {c}/{r['n_image']}" for k, c in zip(r["stage_layers"], r["kept"]))
        st.markdown(f"**Kept per stage:** {stages or 'none pruned'}")
        a, b = st.columns(2)
        a.metric("FLOPs ratio", f"{r['flops_ratio']:.3f}")
        b.metric("Prefill latency ratio", f"{r['latency_ratio']:.2f}")
st.caption("FLOPs ratio: the pruned prefill's FLOPs over the unpruned one's (formula in `prune.flops`). Prefill "
           "latency ratio: this run's prefill time over the unpruned one's, on this machine. On a small model or a "
           "CPU the selection's own cost can outweigh the tokens it saves, so a CPU time is not a speed claim; "
           "`benchmarks/` measures GPU latency.")

st.header("Attention of the last prompt token over the image")
att = cached_attention(name, image_bytes, question)
shown = st.slider("Decoder layer", 0, len(att["layers"]) - 1, min(2, len(att["layers"]) - 1), key="attn_layer")
left, right = st.columns(2)
with left:
    amap = att["maps"][shown]
    st.image(heatmap_png(image, amap, f"layer {att['layers'][shown]}: text-to-image attention, "
                                      f"grid {att['grid'][0]}x{att['grid'][1]}"))
    st.caption(f"Layer {att['layers'][shown]}: the last prompt token puts {float(np.sum(amap)):.1%} of its "
               f"attention on the image; the hottest token holds {float(np.max(amap)):.1%}.")
with right:
    st.markdown("**Text prior** (AdaptInfer: how much each instruction token gives and takes attention; "
                "high = guides a text-guided selection)")
    labels = [f"{i:02d} {w}" for i, w in enumerate(att["words"])]
    st.bar_chart(pd.DataFrame({"prior": att["prior"][shown]}, index=labels), horizontal=True)

st.header("Causal importance of each image token")
if st.toggle("Ablate each image token (one dropped copy per token, batched)", key="causal"):
    found = cached_causal(name, image_bytes, question, tuple(methods), float(keep))
    st.caption(f"Heat: the KL divergence of the next-token distribution when one token is dropped before the LLM "
               f"(explained answer `{found['answer']}`, {found['n_image']} image tokens). Outlined: the tokens each "
               "method keeps. `vtanalysis.causal.importance`.")
    for col, method in zip(st.columns(len(methods)), methods):
        with col:
            st.image(found[method]["overlay"])
