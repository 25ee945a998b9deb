"""What the token-inspection app (`apps/inspect_tokens.py`) computes, apart from its page so it is testable.

Everything here takes a `VLM`, a PIL image and a question, and returns plain numbers, arrays and
PNG bytes that the page shows (and caches).
"""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from . import prune
from .collect import record_attention
from .errors import ImageError
from .models.images import load_image, too_large, upright
from .prune.methods.adaptinfer import text_prior
from .viz.overlay import overlay_figure

MAX_UPLOAD_MB = 20
MAX_PIXELS = 25_000_000  # past this, decoding alone takes seconds and gigabytes; no VLM needs it


def decode_upload(data: bytes, name: str = "upload") -> Image.Image:
    """An uploaded file's bytes as an RGB image, or `ImageError` saying what is wrong and what to do.

    The pixel count is read from the header before any decoding, so a 50-megapixel file is refused
    without being decoded.
    """
    if len(data) > MAX_UPLOAD_MB * 2**20:
        raise ImageError(f"'{name}' is {len(data) / 2**20:.1f} MB; the limit is {MAX_UPLOAD_MB} MB. "
                         "Downscale or re-encode it as JPEG.")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise ImageError(f"'{name}' is {w} x {h} = {w * h / 1e6:.0f} megapixels; the limit is "
                                 f"{MAX_PIXELS / 1e6:.0f}. Downscale it (the model sees a few hundred pixels a side).")
            im.load()
            return upright(im)
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        raise too_large(name, err) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"'{name}' is not a readable image ({type(err).__name__}: the file's bytes are not a "
                         "known image format). Upload a PNG, JPEG, BMP or WebP file.") from err


def sample_images() -> dict[str, tuple[Image.Image, str]]:
    """Bundled images and a question for each: held-out demo scenes, and photos from scikit-image if installed."""
    from .data import shapes

    out = {}
    for seed in (3, 7, 11):  # held-out scenes (training uses seeds >= 1,000,000)
        sc = shapes.scene(seed)
        q = shapes.questions(sc, seed)[0]
        out[f"demo scene {seed}"] = (Image.fromarray(sc.image), q.question)
    photos = Path(__file__).resolve().parents[1] / "data" / "sample" / "images"  # a source checkout's photos
    for name in ("astronaut", "chelsea", "coffee"):
        if (photos / f"{name}.jpg").is_file():
            out[f"photo {name}"] = (load_image(photos / f"{name}.jpg"), "what is in the image ?")
    return out


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def compare(vlm, image: Image.Image, question: str, methods: list[str], keep: float, layer: int | None = None,
            max_new_tokens: int = 8, progress=None) -> dict:
    """Answer unpruned and with each method; what the page shows per method.

    Returns {"unpruned": {...}, method: {...}}, each with answer, kept (counts per stage, of
    n_image), stage_layers, flops_ratio, prefill_s, latency_ratio (prefill time / unpruned) and,
    for methods, overlay (PNG bytes of the retained-token overlay at the last stage).
    `progress(fraction, text)` is called between runs.
    """
    batch = vlm.prepare([image], [question])
    layout = batch.layouts[0]
    knobs = {"layer": layer} if layer is not None else {}
    out = {}
    for i, method in enumerate(["none", *methods]):
        if progress:
            progress(i / (len(methods) + 1), f"running {method}")
        res = prune.run(vlm, batch, method, keep if method != "none" else 1.0, max_new_tokens=max_new_tokens,
                        **(knobs if method != "none" and prune.get(method).where == "llm" else {}))
        row = {"answer": res.answers[0], "kept": [c[0] for c in res.kept_counts], "stage_layers": res.stage_layers,
               "n_image": layout.n_image_tokens, "flops_ratio": res.flops_ratio, "prefill_s": res.prefill_s}
        if method == "none":
            out["unpruned"] = row
            continue
        row["latency_ratio"] = res.prefill_s / max(out["unpruned"]["prefill_s"], 1e-9)
        kept = res.kept[-1][0] if res.kept else list(range(layout.n_image_tokens))
        row["overlay"] = png(overlay_figure(vlm, image, layout, kept, title=f"{method}, keep {keep:g}\n"
                                            f"answer: {res.answers[0]}"))
        out[method] = row
    if progress:
        progress(1.0, "done")
    return out


def attention(vlm, image: Image.Image, question: str) -> dict:
    """Last-prompt-token attention over the first image grid per layer, and the text prior per layer.

    Returns {"maps": [L, h, w] array (head-mean softmax rows), "words": [T] text tokens,
    "prior": [L, T] AdaptInfer's text prior w(j) = sum_i A[i, j] + sum_i A[j, i] - A[j, j] over
    the instruction tokens (head-mean rows), "grid": (h, w)}.
    """
    batch = vlm.prepare([image], [question])
    rec = record_attention(vlm, batch)[0]
    grid = rec.layout.grids[0]
    maps = grid.to_map(rec.last_row).float().numpy()
    ids = batch.model_inputs["input_ids"][0, rec.layout.text_positions]
    words = vlm.processor.tokenizer.convert_ids_to_tokens(ids.tolist())
    prior = np.stack([text_prior(rec.text_to_text[l][None].float())[0].numpy() for l in range(len(rec.layers))])
    return {"maps": maps, "words": words, "prior": prior, "grid": grid.shape, "layers": rec.layers}


def causal_overlays(vlm, image: Image.Image, question: str, methods: list[str], keep: float) -> dict:
    """Causal importance of each image token (`causal.importance`: KL of the next token when the token
    is dropped before the LLM) beside each method's kept tokens.

    Returns {"answer": the explained (unpruned greedy) answer, "n_image": image tokens,
    method: {"overlay": PNG bytes of the importance heat map with the method's kept tokens outlined,
    "kl_kept_only": KL when only those tokens enter the LLM}}.
    """
    from . import causal
    from .viz.overlay import draw_heat

    batch = vlm.prepare([image], [question])
    layout, grid = batch.layouts[0], batch.layouts[0].grids[0]
    ref = causal.reference(vlm, batch)
    scores = causal.importance(vlm, batch, "drop", 0, ref=ref)[0, :layout.n_image_tokens]
    extent = vlm.adapter.grid_extent(vlm.processor, grid, image.size)
    out = {"answer": ref.answers[0], "n_image": layout.n_image_tokens}
    for method in methods:
        stages = prune.select(vlm, batch, method, keep)
        kept = stages[-1][0] if stages else torch.arange(layout.n_image_tokens)
        dropped = torch.ones(layout.n_image_tokens, dtype=torch.bool)
        dropped[kept] = False
        kl = float(causal.ablate(vlm, batch, [dropped.nonzero().flatten()], ref=ref).kl[0])
        fig, ax = plt.subplots(figsize=(4.2, 4.6))
        draw_heat(ax, image, grid, scores.numpy(), extent, kept_columns=kept,
                  title=f"{method}, keep {keep:g}: kept tokens outlined\nKL if only they enter the LLM: {kl:.3f}")
        fig.tight_layout()
        out[method] = {"overlay": png(fig), "kl_kept_only": kl}
    return out


def heatmap_png(image: Image.Image, amap: np.ndarray, title: str) -> bytes:
    """The image with one attention map [h, w] laid over it (nearest cells, so tokens stay visible)."""
    fig, ax = plt.subplots(figsize=(4.2, 4.4))
    ax.imshow(image)
    ax.imshow(amap, cmap="inferno", alpha=0.6, extent=(0, image.width, image.height, 0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return png(fig)
