"""CDPruner (Zhang et al. 2025, conditional DPP), from the authors' code (Theia-4869/CDPruner,
`llava/model/llava_arch.py` `encode_images`, and `multimodal_encoder/clip_encoder.py`).

Per crop (an image; a LLaVA-NeXT base image or tile) keeping T of its N patch tokens:
    S_ij   = cos(x_i, x_j), x the projector outputs (the LLM's image embeddings), float32
    z_i    = visual_projection(post_layernorm(v_i)), v the tower's feature-layer patch states:
             patch embeddings in the CLIP joint space
    e_m    = the CLIP text embeddings (pooled, projected) of the question, one per chunk of the
             text encoder's context (77 for OpenAI CLIP; several only for long questions)
    r_i    = mean_m ( -cos(z_i, e_m) ),  then  (r_i - min r + 1e-6) / (max r - min r)
             (the authors' sign and min-max; the min and max run over all the sample's patches)
    K_ij   = r_i S_ij r_j,  and T greedy MAP picks (fast greedy DPP, incremental Cholesky):
             j = argmax d; e = (K_j - c_j^T C) / sqrt(d_j); C += [e]; d -= e^2; d_j = -inf
Kept tokens in sequence order; LLaVA-NeXT newline tokens kept on top.

Fidelity: equal to the authors' selection (`llava/model/llava_arch.py`, `encode_images`, with the
relevance of `multimodal_encoder/clip_encoder.py`) on every case tried. Their kernel is float32
already, so there is no float16 variant to offer.

Differences from the authors' code: the relevance min-max runs per sample (theirs over the whole
batch, which their batch-1 evaluation makes the same thing, and which would let one sample change
another's selection); CLIP runs in float32. The question is the sample's question as passed to
`VLM.prepare`, without the chat template, as their evaluation scripts pass it.
When the budget exceeds the kernel's numerical rank (duplicated or collinear tokens, or fewer
embedding dimensions than kept tokens) the best greedy gain reaches zero, a negative rounding
residue or NaN; the authors' loop then divides by its square root and returns a repeated index.
Ours stops the greedy there and fills the rest of the crop's budget with the unpicked tokens of
highest relevance (largest K_ii), so the result is always `keep` distinct tokens; before that
point every pick is the authors' (`greedy_map`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import VTAError
from ..engine import split_newlines
from ..plans import among_patches, pre_stage
from ..registry import Method, Need, register


def greedy_map(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """[k] distinct indices (pick order) of the fast greedy MAP of the DPP with `kernel` [n, n].

    The authors' greedy step while the best gain d_j is positive. Once it is not (zero, negative
    or NaN: the budget has reached the kernel's numerical rank, e.g. duplicated tokens), the rest
    are the unpicked tokens of largest diagonal K_ii = r_i^2 S_ii (relevance order), instead of the
    square root of a non-positive gain (the authors' code then divides by 0 or takes NaN and
    repeats an index). About 18 dispatched ops per pick, all on the device (the stop is a 1-element
    tensor, never read back)."""
    n = kernel.shape[0]
    k = min(k, n)
    picks = torch.empty(k, dtype=torch.long, device=kernel.device)
    chol = torch.zeros(k, n, device=kernel.device, dtype=kernel.dtype)
    gain = kernel.diagonal().clone()
    fill = kernel.diagonal().clone()  # the fallback ranking once the gains are spent
    spent = torch.zeros(1, dtype=torch.bool, device=kernel.device)
    for i in range(k):
        j = gain.argmax(dim=0, keepdim=True)
        best = gain.index_select(0, j)
        spent = spent | ~(best > 0)  # sticky; NaN > 0 is False
        j = torch.where(spent, fill.argmax(dim=0, keepdim=True), j)
        picks[i:i + 1] = j
        scale = torch.where(spent, torch.ones_like(best), best).sqrt()
        e = (kernel.index_select(0, j)[0] - chol[:i].index_select(1, j)[:, 0] @ chol[:i]) / scale
        chol[i] = torch.where(spent, torch.zeros_like(e), e)
        gain = (gain - chol[i] * chol[i]).index_fill(0, j, float("-inf"))
        fill = fill.index_fill(0, j, float("-inf"))
    return picks


def relevance(clip, features: torch.Tensor, question: str) -> torch.Tensor:
    """[n] the authors' relevance of each patch (feature-layer states [n, Dv]) to `question`.

    clip: an `analysis.grounding.HFClip` over the transformers `CLIPModel` the vision tower comes from.
    """
    model = clip.model
    with torch.no_grad():
        joint = model.visual_projection(model.vision_model.post_layernorm(features.to(model.dtype))).float()
        text = text_embeddings(clip, question)
    r = -(F.normalize(joint, dim=-1) @ F.normalize(text, dim=-1).T).mean(-1)
    return (r - r.min() + 1e-6) / (r.max() - r.min())


def text_embeddings(clip, question: str) -> torch.Tensor:
    """[M, C] pooled, projected text embeddings of `question`, cut into chunks of the text
    encoder's context without truncation (the authors' segments, zero-padded)."""
    enc = clip.tokenizer([question])
    ids, mask = enc["input_ids"], enc["attention_mask"]
    span = clip.model.config.text_config.max_position_embeddings
    chunks = -(-ids.shape[1] // span)
    pad = chunks * span - ids.shape[1]
    ids, mask = F.pad(ids, (0, pad)).view(chunks, span), F.pad(mask, (0, pad)).view(chunks, span)
    return clip.encode_text({"input_ids": ids, "attention_mask": mask}).float()


def require_clip(vlm, clip):
    """The CLIP to use: `clip` as given, else the demo model's own; else a `VTAError` saying what to pass."""
    from ...analysis.grounding import HFClip

    if isinstance(clip, HFClip):
        return clip
    if isinstance(clip, tuple):
        return HFClip(*clip)
    if clip is not None:
        raise VTAError(f"clip= takes an analysis.grounding.HFClip or a (CLIPModel, CLIPProcessor) pair, not "
                       f"{type(clip).__name__}.")
    if getattr(vlm, "name", None) == "demo":
        from ...models import demo

        try:
            return HFClip(*demo.clip(), text_suffix=" </s>")
        except VTAError:
            pass
    raise VTAError("cdpruner scores relevance with the CLIP text encoder the vision tower came from: pass "
                   "clip=HFClip(CLIPModel, CLIPProcessor) (or a (model, processor) pair), e.g. for LLaVA-1.5 "
                   "openai/clip-vit-large-patch14-336.")


def choose_cdpruner(inputs, keep, stage, clip=None):
    """CDPruner (`prune.cdpruner`): relevance over all the sample's patches, one DPP per crop."""
    if inputs.question is None:
        raise VTAError("cdpruner encodes the question with CLIP: prepare the batch with questions=, not prompts=.")
    newlines, patches = split_newlines(inputs)
    rel = torch.zeros(len(inputs.columns), device=inputs.columns.device)
    rel[patches] = relevance(clip, inputs.vision_features[patches], inputs.question)
    x = F.normalize(inputs.image_embeds.float(), dim=-1)

    def pick(inputs, crop, k):
        kernel = rel[crop, None] * (x[crop] @ x[crop].T) * rel[None, crop]
        return greedy_map(kernel, k)
    return among_patches(pick)(inputs, keep, stage)



def cdpruner_knobs(vlm, knobs):
    return {**knobs, "clip": require_clip(vlm, knobs.get("clip"))}



register(Method(name="cdpruner", summary="CDPruner: conditional DPP, CLIP question relevance x projector-output "
                "similarity, per crop", where="pre", needs=(Need.CLS, Need.CLS_TOKEN, Need.VISION_FEATURES, Need.EMBEDS),
                choose=choose_cdpruner, plan=pre_stage(), positions="renumber", choose_knobs=("clip",),
                resolve_knobs=cdpruner_knobs))
