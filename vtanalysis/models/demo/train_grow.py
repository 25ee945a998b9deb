"""The deep demo grown from the shipped small one (issue 42), in resumable pieces that land.

Two measured dead ends shaped this recipe: a from-scratch contrastive tower (`train_deep`'s clip
stage) never learned shape on object patches (probe 0.35, chance 0.25), so no decoder on top of it
could answer shape questions; and fresh 4- or 16-layer decoders on a frozen tower reached only
0.39-0.47 held-out in 250-500 steps. The shipped small demo already works (0.96 held-out, its tower
reads shape at 0.98), so both halves start from it:

    tower     the shipped small demo's vision tower is made contrastive. A fresh 3-layer text
              encoder and the tower learn scene/caption and crop/phrase pairs with the symmetric
              InfoNCE loss (`train_deep.clip_pairs`, as in `train_deep`'s clip stage), while
              `anchor_weight` x the normalised MSE between the tower's patch outputs and the
              original tower's keeps the image tokens the small decoder (and its grown copy) reads,
              and the balanced per-patch attribute loss (`train_deep.balanced_patch_loss`) keeps
              shape, colour and size readable per patch. The tower learns at `tower_lr` (2e-4), the
              fresh parts (text encoder, projections, temperature, patch head) at `rest_lr` (1e-3):
              measured, retrieval@1 among 256 scenes went 0.01 -> 0.72 -> 0.887 at steps 0/100/200
              with the shape probe at 0.97. [CLS] attention and text-to-image similarity then have
              their CLIP meaning, which the AdaFV-style analyses need.
    instruct  the shipped 4-layer decoder grown function-preservingly to 4 x (1 + `copies`) layers
              (`grow`: each trained layer followed by copies of itself whose attention output and
              MLP down projections are zero, so each copy adds nothing to the residual stream and
              the grown model answers as the small one: 0.962 held-out before any step), reading the
              contrastive tower frozen, then fine-tuned as LLaVA's instruction stage
              (`train_demo.batch` conversations, loss on answers, plus `aux_weight` x the small
              recipe's patch loss on the projected image tokens, `train_deep.llm_loss`). The copies
              learn at `lr`, the trained parts at the lower `trained_lr`: the copies start from zero
              output and must move far for the layers to differ, the trained parts must keep what
              already works.

Before each stage a freshly initialised linear read-out (the tower's patch head, the decoder's
position head) is fitted alone on frozen features (`fit_head`), so the auxiliary losses start at
their trained level instead of sending random gradients into weights that already work.

The state lands in `out/checkpoint.pt` (the layout of `train_deep`'s, so `train_deep.export_weights`
exports it: fp16, no optimizer, about 10 MB) and every call to `train` is one piece: `minutes` stops
it cleanly (an evaluation and a save first), and the piece's record - steps, seconds per step,
held-out probes, retrieval, exact match overall and per question type, per-layer measures - is
appended to `training_json`. Held-out scenes (seeds below `train_demo.TRAIN_SEED0`) are never
trained on.
"""
from __future__ import annotations

import copy
import datetime
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers

from ...data import shapes
from ..._core.files import atomic_write
from .. import demo
from .train_deep import (REWARM, balanced_patch_loss, caption_ids, clip_pairs, export_weights, llm_loss,
                         optimizer_step, patch_head, patch_parts, resume_state)
from .growth import grow, is_copy  # noqa: F401  (grow is part of this recipe's API)
from .train_demo import TRAIN_SEED0, batch, lr_at, patch_labels, position_head, quick_eval

STAGES = ("tower", "instruct")
# scenes of each stage start at TRAIN_SEED0 + this x 10^7 (train_deep uses 0..2; the probes' fit scenes 9)
SEED_BLOCK = {"tower": 5, "instruct": 6}
PROBE_FIT_SEED0 = TRAIN_SEED0 + 9 * 10_000_000
TOWER = demo.Shape(vision_layers=demo.SMALL.vision_layers, feature_layer=demo.SMALL.feature_layer, text_layers=3)


@dataclass
class GrowRecipe:
    """Steps, batch sizes and learning rates of the two stages (recorded in `training.json`)."""
    tower_steps: int = 400
    tower_target: float = 0.95  # the tower stage ends early once every probe and retrieval@1 reach this
    tower_batch: int = 128
    tower_lr: float = 2e-4
    rest_lr: float = 1e-3
    anchor_weight: float = 10.0
    patch_weight: float = 1.0
    crop_p: float = 0.25
    copies: int = 3  # zero-branch copies after each trained layer: 4 -> 16 layers
    copy_noise: float = 0.1  # the copies' other weights perturbed by this x each matrix's std (`grow`)
    instruct_steps: int = 1200
    batch_size: int = 32
    lr: float = 1e-3  # the grown copies
    trained_lr: float = 2e-4  # the layers, embeddings, projector and head that come trained
    aux_weight: float = 0.5
    caption_p: float = 0.2
    drop_trained: float = 0.0  # stochastic depth on the trained layers (`layer_drop`); 0 = off
    warmup: int = 30
    seed: int = 0

    def steps(self, stage: str) -> int:
        return {"tower": self.tower_steps, "instruct": self.instruct_steps}[stage]


# the recipe of the shipped `demo` (training/demo-grow-fresh): nearly fresh copies and stochastic depth on
# the trained layers made the copies write 3-25 % of the residual stream, against 1-15 % without them
SHIPPED = GrowRecipe(copy_noise=1.0, drop_trained=0.8)


# -- starting points ---------------------------------------------------------------------------------
def shipped():
    """The shipped small demo (`load_vlm("demo-small")`'s weights), on the CPU in float32."""
    from ..loading import load_vlm

    return load_vlm(demo.SMALL_WEIGHTS)


def tower_clip(small) -> transformers.CLIPModel:
    """A CLIP whose vision model is `small`'s tower (4 layers, read at its last layer, as the small
    LLaVA reads it) and whose text encoder, projections and temperature are fresh."""
    clip = transformers.CLIPModel(demo.clip_config(small.processor, TOWER))
    clip.vision_model.load_state_dict(small.model.model.vision_tower.state_dict())
    return clip


# -- measurements ------------------------------------------------------------------------------------
def _tower_features(tower, proc, seeds, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch features [B, N, d] at the LLaVA feature layer of held-out or probe scenes, and their labels [B, 5, N]."""
    scenes = [shapes.scene(s) for s in seeds]
    pixels = proc.image_processor([sc.image for sc in scenes], return_tensors="pt")["pixel_values"].to(device)
    feats = torch.cat([tower(pixel_values=p, output_hidden_states=True).hidden_states[TOWER.feature_layer][:, 1:]
                       for p in pixels.split(64)])
    return feats.float(), torch.stack([patch_labels(sc, demo.PATCH) for sc in scenes]).to(device)


@torch.no_grad()
def linear_probes(tower, proc, n_fit: int = 384, n_test: int = 128, device="cpu") -> dict:
    """Held-out linear probes on object patches: for shape, colour and size, a linear classifier fitted
    (L-BFGS, standardised features, a little L2) on the object patches of `n_fit` training-range scenes
    and scored on those of held-out scenes 0 .. `n_test` - 1 (chance about 1/4, 1/8, 1/3). What a
    linear read of one image token can tell, independent of any head trained with the tower."""
    was = tower.training
    tower.eval()
    fx, fl = _tower_features(tower, proc, range(PROBE_FIT_SEED0, PROBE_FIT_SEED0 + n_fit), device)
    tx, tl = _tower_features(tower, proc, range(n_test), device)
    tower.train(was)
    fobj, tobj = fl[:, 0] > 0, tl[:, 0] > 0
    xf, xt = fx[fobj], tx[tobj]
    mu, sd = xf.mean(0), xf.std(0) + 1e-5
    xf, xt = (xf - mu) / sd, (xt - mu) / sd
    out = {}
    for k, name in enumerate(("shape", "color", "size")):
        yf, yt = fl[:, k][fobj] - 1, tl[:, k][tobj] - 1
        classes = len(list(demo_attribute_values(name)))
        lin = torch.nn.Linear(xf.shape[1], classes)
        opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            with torch.enable_grad():
                loss = F.cross_entropy(lin(xf), yf) + 1e-4 * lin.weight.pow(2).sum()
                loss.backward()
            return loss
        with torch.enable_grad():
            opt.step(closure)
        out[f"probe_{name}"] = float((lin(xt).argmax(-1) == yt).float().mean())  # ok-host: once per evaluation
    out["probe_object_patches"] = int(tobj.sum())
    return out


def demo_attribute_values(name: str):
    return {"shape": shapes.SHAPES, "color": tuple(shapes.COLORS), "size": tuple(shapes.RADIUS)}[name]


@torch.no_grad()
def retrieval(clip: transformers.CLIPModel, proc, n: int = 256, device="cpu") -> dict:
    """Held-out image -> caption retrieval@1 among `n` scenes (chance 1/n), and caption -> image."""
    was = clip.training
    clip.eval()
    scenes = [shapes.scene(s) for s in range(n)]
    pixels = proc.image_processor([sc.image for sc in scenes], return_tensors="pt")["pixel_values"].to(device)
    ids, mask = caption_ids(proc.tokenizer, [shapes.caption(sc) for sc in scenes], device)
    image = F.normalize(clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output), dim=-1)
    text = F.normalize(clip.text_projection(clip.text_model(input_ids=ids, attention_mask=mask).pooler_output), dim=-1)
    sim, target = image @ text.T, torch.arange(n, device=device)
    clip.train(was)
    return {"retrieval@1": float((sim.argmax(-1) == target).float().mean()),  # ok-host: once per evaluation
            "text_retrieval@1": float((sim.argmax(0) == target).float().mean()), "retrieval_n": n}


@torch.no_grad()
def layer_profile(vlm, n: int = 48) -> dict:
    """Per-decoder-layer measures that show whether the layers differ, on the first question of held-out
    scenes 0 .. n-1:
      image_mass      the last prompt token's attention mass on the image tokens (head mean);
      adjacent_cos    cosine between that token's image-attention row at a layer and at the layer before;
      update_ratio    |h_out - h_in| / |h_in| of the last prompt token: how much the layer writes;
      o_proj_norm, down_proj_norm   Frobenius norms of the residual branches' output weights;
      change_points   the inflection detector's layers on the image-mass curve (`analysis.inflection`).
    A grown model before fine-tuning has blocky curves (each copy repeats its layer's attention and
    writes nothing); training that makes the layers differ shows as copies that write and attend
    elsewhere."""
    from ...analysis.inflection import change_points
    from ...collect import record_attention

    was = vlm.model.training
    vlm.model.eval()
    scenes = [shapes.scene(s) for s in range(n)]
    qs = [shapes.questions(sc, sc.seed)[0].question for sc in scenes]
    layers = vlm.model.model.language_model.layers
    seen: dict[int, tuple] = {}  # layer -> (input, output) hidden states at the last position

    def hook(i):
        def fn(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            seen[i] = (x[:, -1].float(), y[:, -1].float())  # left padded: the last position ends the prompt
        return fn
    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    mass, rows, ratios = [], [], []
    try:
        for lo in range(0, n, 16):
            b = vlm.prepare([sc.image for sc in scenes[lo:lo + 16]], qs[lo:lo + 16])
            rec = record_attention(vlm, b)
            last = torch.stack([s.last_row for s in rec]).float()  # [B, L, n_image]
            mass.append(last.sum(-1))
            rows.append(last)
            seen.clear()
            vlm.model(**b.model_inputs)
            ratios.append(torch.stack([(seen[i][1] - seen[i][0]).norm(dim=-1) / seen[i][0].norm(dim=-1)
                                       for i in range(len(layers))], 1))
    finally:
        for h in handles:
            h.remove()
    mass, rows, ratios = torch.cat(mass).mean(0), torch.cat(rows), torch.cat(ratios).mean(0)
    cos = F.cosine_similarity(rows[:, 1:], rows[:, :-1], dim=-1).mean(0)
    vlm.model.train(was)
    curve = [round(float(x), 4) for x in mass]
    return {"image_mass": curve,
            "adjacent_cos": [None] + [round(float(x), 4) for x in cos],
            "update_ratio": [round(float(x), 4) for x in ratios],
            "o_proj_norm": [round(float(l.self_attn.o_proj.weight.norm()), 3) for l in layers],
            "down_proj_norm": [round(float(l.mlp.down_proj.weight.norm()), 3) for l in layers],
            "change_points": [p.layer for p in change_points(curve)], "n": n}


def exact_match(vlm, n_scenes: int) -> dict:
    """Held-out exact match overall and per question type (`train_demo.quick_eval`: the first answer
    token of one question per supported type on scenes 0 .. n_scenes - 1; every answer is one word)."""
    r = quick_eval(vlm, n_scenes=n_scenes)
    return {"exact_match": round(r["accuracy"], 4), "per_type": {k: round(v, 4) for k, v in r["per_type"].items()},
            "eval_scenes": n_scenes}


# -- auxiliary heads fitted before a stage ----------------------------------------------------------
def fit_head(head: torch.nn.Module, feats: torch.Tensor, loss_of, steps: int = 150, lr: float = 1e-2) -> float:
    """Fit `head` alone (Adam, full batch) on frozen `feats` for `steps` steps; returns the final loss."""
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(steps):
        loss = loss_of(head, feats)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(loss.detach())


def prefit_patch_head(tower, head, proc, seeds, device) -> float:
    with torch.no_grad():
        feats, labels = _tower_features(tower, proc, seeds, device)
    return fit_head(head, feats, lambda h, x: balanced_patch_loss(patch_parts(h, x), labels))


def prefit_position_head(vlm, head, seeds, device) -> float:
    """Column and row classes of the projected image tokens (the position part of `train_demo.patch_loss`)."""
    from .train_demo import grid_side, image_tokens

    scenes = [shapes.scene(s) for s in seeds]
    pixels = vlm.processor.image_processor([sc.image for sc in scenes], return_tensors="pt")["pixel_values"].to(device)
    labels = torch.stack([patch_labels(sc, demo.PATCH) for sc in scenes]).to(device)
    with torch.no_grad():
        tokens = image_tokens(vlm, pixels).float()
    g = grid_side(vlm)

    def loss_of(h, x):
        return sum(F.cross_entropy(lg.flatten(0, 1), labels[:, 3 + k].flatten())
                   for k, lg in enumerate(h(x).split(g, dim=-1))) / 2
    return fit_head(head, tokens, loss_of)


# -- the tower stage's loss --------------------------------------------------------------------------
def tower_loss(clip, head, reference, proc, scenes, recipe: GrowRecipe, seed: int, device) -> tuple[torch.Tensor, dict]:
    """InfoNCE over the batch's pairs (scenes/captions, a share `crop_p` as crops/phrases) +
    `patch_weight` x the balanced per-patch attribute loss + `anchor_weight` x the normalised MSE
    (mean squared difference / mean square of the reference) between the tower's patch outputs at the
    LLaVA feature layer and `reference`'s (the original tower, frozen), on the whole scenes."""
    images, texts, whole = clip_pairs(scenes, recipe.crop_p, seed)
    pixels = proc.image_processor(images, return_tensors="pt")["pixel_values"].to(device)
    ids, mask = caption_ids(proc.tokenizer, texts, device)
    vision = clip.vision_model(pixel_values=pixels, output_hidden_states=True)
    image = F.normalize(clip.visual_projection(vision.pooler_output), dim=-1)
    text = F.normalize(clip.text_projection(clip.text_model(input_ids=ids, attention_mask=mask).pooler_output), dim=-1)
    logits = clip.logit_scale.exp().clamp(max=100) * image @ text.T
    target = torch.arange(len(scenes), device=device)
    contrastive = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    feats = vision.hidden_states[TOWER.feature_layer][:whole, 1:]
    with torch.no_grad():
        ref = reference(pixel_values=pixels[:whole], output_hidden_states=True)
        ref = ref.hidden_states[TOWER.feature_layer][:, 1:]
    anchor = (feats.float() - ref.float()).pow(2).mean() / ref.float().pow(2).mean()
    labels = torch.stack([patch_labels(sc, demo.PATCH) for sc in scenes[:whole]]).to(device)
    patch = balanced_patch_loss(patch_parts(head, feats), labels)
    loss = contrastive + recipe.patch_weight * patch + recipe.anchor_weight * anchor
    return loss, {"contrastive": contrastive, "patch": patch, "anchor": anchor,
                  "batch_retrieval": (logits.argmax(-1) == target).float().mean()}


def layer_drop(vlm, recipe: GrowRecipe, gen: torch.Generator) -> list:
    """Stochastic depth on the grown decoder's trained layers: in training mode trained layer l (of L)
    is skipped (its output replaced by its input) for each sample with probability
    `recipe.drop_trained` x l / (L - 1), the linear rule of stochastic depth (the first layer, which
    turns the embeddings into the residual stream, is never skipped); evaluation runs every layer.
    Returns the hook handles.

    Why: piece 1 (zero-branch copies, fine-tuned 300 steps at 5x the trained layers' learning rate)
    left the copies nearly passive - each writes 1-5 % of the residual stream where the trained
    layers write 50-140 %, and their attention stays that of the layer they copy (cosine 0.99) -
    because the grown model already answers 0.96 and the loss gives the copies nothing to do. With
    a trained layer sometimes missing, the copies around it must learn to do part of its work, and
    it must learn to work with them: depth carries function.
    """
    layers = vlm.model.model.language_model.layers

    def make(p: float):
        def hook(module, args, kwargs, output):
            if not module.training:
                return output
            x = args[0] if args else kwargs["hidden_states"]
            keep = torch.rand(x.shape[0], generator=gen) >= p
            return torch.where(keep.to(x.device)[:, None, None], output, x.to(output.dtype))
        return hook
    last = len(layers) - 1
    return [layer.register_forward_hook(make(recipe.drop_trained * i / last), with_kwargs=True)
            for i, layer in enumerate(layers) if not is_copy(i, recipe.copies) and i > 0]


def same_recipe(saved: dict, recipe: GrowRecipe) -> bool:
    """Whether a checkpoint's recipe is `recipe`; a field it lacks counts as that field's default
    (fields added later default to the behaviour before them)."""
    defaults = asdict(GrowRecipe())
    return all(saved.get(k, defaults[k]) == v for k, v in asdict(recipe).items())


def tower_done(m: dict, target: float) -> bool:
    """Whether a tower evaluation meets the issue's targets: shape, colour, size probes and retrieval@1."""
    return all(m.get(k, 0) >= target for k in ("probe_shape", "probe_color", "probe_size", "retrieval@1"))


# -- the staged, resumable loop ----------------------------------------------------------------------
def _llava(clip, small, recipe: GrowRecipe, device):
    """The grown LLaVA reading `clip`'s vision model, frozen."""
    vlm = grow(small, recipe.copies, recipe.copy_noise, recipe.seed)
    vlm.model.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    vlm.model.model.vision_tower.requires_grad_(False)
    vlm.model.to(device)
    return vlm


def _optimizer(stage, recipe: GrowRecipe, clip, chead, vlm, head):
    """Param groups: tower stage - the tower at `tower_lr`, the fresh parts at `rest_lr`; instruct -
    the grown copies at `lr`, the trained parts at `trained_lr` (the tower is frozen)."""
    if stage == "tower":
        tower = [p for n, p in clip.vision_model.named_parameters() if not n.startswith("post_layernorm")]
        ids = {id(p) for p in tower}
        rest = [p for p in [*clip.parameters(), *chead.parameters()] if id(p) not in ids]
        groups = [{"params": tower, "peak": recipe.tower_lr}, {"params": rest, "peak": recipe.rest_lr}]
        decay = 0.01
    else:
        copies, trained = [], [*head.parameters()]
        for n, p in vlm.model.named_parameters():
            if not p.requires_grad:
                continue
            layer = n.split(".layers.")[1].split(".")[0] if ".layers." in n and "language_model" in n else None
            (copies if layer is not None and is_copy(int(layer), recipe.copies) else trained).append(p)
        groups = [{"params": copies, "peak": recipe.lr}, {"params": trained, "peak": recipe.trained_lr}]
        decay = 0.01
    for g in groups:
        g["lr"] = g["peak"]
    return torch.optim.AdamW(groups, betas=(0.9, 0.98), weight_decay=decay)


EVAL_SIZES = {"eval_scenes": 200, "probe_fit": 384, "probe_test": 128, "retrieval": 256, "layers": 48}


def _evaluate(stage, step, clip, vlm, proc, sizes: dict, device) -> dict:
    """Tower stage: held-out linear probes and retrieval; instruct: held-out exact match and `layer_profile`."""
    out = {"stage": stage, "step": step}
    if stage == "tower" or vlm is None:
        out.update(linear_probes(clip.vision_model, proc, sizes["probe_fit"], sizes["probe_test"], device=device))
        out.update(retrieval(clip, proc, sizes["retrieval"], device=device))
    else:
        out.update(exact_match(vlm, sizes["eval_scenes"]))
        out["layers"] = layer_profile(vlm, sizes["layers"])
    return out


def _save(path, recipe, stage, step, clip, chead, vlm, head, opt, history, minutes, rewarm_from=None) -> None:
    """The state, in `train_deep`'s checkpoint layout (so `train_deep.export_weights` exports it)."""
    state = {"kind": "grow", "recipe": asdict(recipe), "stage": stage, "step": step, "rewarm_from": rewarm_from,
             "clip": clip.state_dict(), "clip_head": chead.state_dict(), "history": history, "minutes": minutes,
             "opt_stage": stage if opt is not None else None, "opt": opt.state_dict() if opt is not None else None}
    if vlm is not None:
        state["llava"], state["head"] = vlm.model.state_dict(), head.state_dict()
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def append_piece(training_json: str | Path, recipe: GrowRecipe, piece: dict) -> None:
    """Append one piece's record to `training_json` ({"recipe", "pieces": [...]}), atomically."""
    path = Path(training_json)
    doc = json.loads(path.read_text()) if path.is_file() else {"recipe": asdict(recipe), "pieces": []}
    if not same_recipe(doc.get("recipe", {}), recipe):
        piece = {**piece, "recipe": asdict(recipe)}  # a changed recipe is recorded with the piece it ran
    doc["pieces"].append(piece)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))


def train(out: str | Path = "runs/demo-grow", recipe: GrowRecipe | None = None, *, device: str = "cpu",
          minutes: float | None = None, max_steps: int | None = None, save_every: int = 50,
          eval_every: dict | None = None, eval_sizes: dict | None = None, final_eval: bool = True,
          resume_from: str | Path | None = None, export_to: str | Path | None = None,
          training_json: str | Path | None = None, bf16: bool = True, note: str = "", log=print) -> dict:
    """Run (or resume) the recipe as one piece; returns {"finished", "stage", "step", "history", "piece",
    "vlm", "clip"}.

    `minutes` bounds the piece's wall time, evaluations included (the loop stops when less than the
    last evaluation's duration is left), `max_steps` its optimizer steps. At the stop the state is
    evaluated (`final_eval`), saved to `out/checkpoint.pt`, exported (fp16, no optimizer) to
    `export_to`, and the piece is appended to `training_json`; calling again goes on where it
    stopped. `resume_from`: an exported file, used when `out` has no checkpoint (a new session's
    scratch folder); the optimizer restarts and the learning rate re-warms over `REWARM` steps.
    A finished run given a recipe with more `instruct_steps` goes on at its last instruct step.
    `eval_every`: {stage: steps} (default tower 50, instruct 100); each stage is also evaluated at
    its start (the instruct stage: the grown model before any step). `eval_sizes`: scene counts of
    the evaluations (`EVAL_SIZES`).
    """
    from ...errors import VTAError

    recipe = recipe or GrowRecipe()
    sizes = {**EVAL_SIZES, **(eval_sizes or {})}
    eval_every = {"tower": 50, "instruct": 100, **(eval_every or {})}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    small = shipped()
    proc = small.processor
    torch.manual_seed(recipe.seed)
    clip = tower_clip(small).to(device)
    chead = patch_head(clip).to(device)
    ckpt = out / "checkpoint.pt"
    source, state = resume_state(ckpt, resume_from, device)
    if state is not None and state.get("kind") != "grow":
        raise VTAError(f"{source} is not a train_grow checkpoint.")
    if state is not None and not same_recipe(state["recipe"], recipe):
        changed = {k: (state["recipe"].get(k), v) for k, v in asdict(recipe).items() if state["recipe"].get(k) != v}
        log(f"recipe changed since {source.name}: {changed} (going on from its weights)")
    stage, step = ("tower", 0) if state is None else (state["stage"], state["step"])
    if stage == "done" and recipe.instruct_steps > state["recipe"]["instruct_steps"]:
        # a finished run extended: the instruct stage goes on from its last step under the longer schedule
        stage, step = "instruct", state["recipe"]["instruct_steps"]
    history, spent = ([], 0.0) if state is None else (state["history"], state["minutes"])
    rewarm_from = None if state is None else state.get("rewarm_from")
    fresh_opt = state is None or state.get("opt") is None or not same_recipe(state["recipe"], recipe)
    if state is not None:
        clip.load_state_dict({k: v.float() for k, v in state["clip"].items()})
        chead.load_state_dict({k: v.float() for k, v in state["clip_head"].items()})
        if fresh_opt and step > 0:
            rewarm_from = step
            history.append({"stage": stage, "step": step, "event": f"resumed from {source.name}: fresh optimizer"
                            f"{'' if same_recipe(state['recipe'], recipe) else ' (recipe changed)'}, learning rate "
                            f"re-warmed over {REWARM} steps"})
        log(f"resumed from {source}: stage {stage}, step {step}, {spent:.1f} min so far")
    reference = copy.deepcopy(small.model.model.vision_tower).to(device).eval().requires_grad_(False)
    vlm = head = None
    piece = {"started": started_at, "from": {"stage": stage, "step": step}, "note": note,
             "device": f"{device} ({torch.get_num_threads()} thread{'s' * (torch.get_num_threads() > 1)})",
             "precision": "bf16 autocast" if bf16 else "fp32", "steps": {}, "seconds_per_step": {}, "evals": []}
    taken, step_time, last_eval_s = 0, {}, 60.0
    drop_gen = torch.Generator()  # `layer_drop`'s draws, re-seeded every step (a resumed run draws the same)

    def elapsed() -> float:
        return (time.perf_counter() - t_start) / 60

    def evaluate():
        nonlocal last_eval_s
        t = time.perf_counter()
        m = _evaluate(stage, step, clip, vlm, proc, sizes, device)
        last_eval_s = time.perf_counter() - t
        m["minutes"] = round(spent + elapsed(), 2)
        m["eval_seconds"] = round(last_eval_s, 1)
        history.append(m)
        piece["evals"].append(m)
        log(json.dumps(m))

    def finish(finished: bool, opt) -> dict:
        if final_eval and not (history and history[-1].get("stage") == stage and history[-1].get("step") == step
                               and "event" not in history[-1]) and stage != "done":
            evaluate()
        _save(ckpt, recipe, stage, step, clip, chead, vlm, head, opt, history, spent + elapsed(), rewarm_from)
        piece.update({"to": {"stage": stage, "step": step}, "wall_minutes": round(elapsed(), 2),
                      "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      "seconds_per_step": {k: round(v[0] / max(1, v[1]), 2) for k, v in step_time.items()},
                      "steps": {k: v[1] for k, v in step_time.items()}})
        if export_to is not None:
            p = export_weights(out, export_to)
            piece["exported"] = {"path": str(export_to), "bytes": p.stat().st_size}
        if training_json is not None:
            append_piece(training_json, recipe, piece)
        keys = ("from", "to", "steps", "seconds_per_step", "wall_minutes")
        log(f"piece done: {json.dumps({k: piece[k] for k in keys})}")
        return {"finished": finished, "stage": stage, "step": step, "history": history, "piece": piece,
                "vlm": vlm, "clip": clip}

    while stage != "done":
        total = recipe.steps(stage)
        if stage == "tower":
            clip.train()
            if step == 0:
                fitted = prefit_patch_head(clip.vision_model, chead, proc,
                                           range(PROBE_FIT_SEED0 + 10**6, PROBE_FIT_SEED0 + 10**6 + 256), device)
                log(f"patch head fitted on the frozen tower: balanced patch loss {fitted:.3f}")
                evaluate()
        elif vlm is None:
            vlm = _llava(clip, small, recipe, device)
            head = position_head(vlm).to(device)
            if state is not None and "llava" in state:
                vlm.model.load_state_dict({k: v.float() for k, v in state["llava"].items()})
                head.load_state_dict({k: v.float() for k, v in state["head"].items()})
            else:
                fitted = prefit_position_head(vlm, head, range(PROBE_FIT_SEED0 + 2 * 10**6,
                                                               PROBE_FIT_SEED0 + 2 * 10**6 + 128), device)
                log(f"position head fitted on the frozen projected tokens: loss {fitted:.3f}")
            vlm.model.train()
            if recipe.drop_trained > 0:
                layer_drop(vlm, recipe, drop_gen)
            if step == 0:
                evaluate()  # the grown model before any step, with the contrastive tower
        opt = _optimizer(stage, recipe, clip, chead, vlm, head)
        if state is not None and not fresh_opt and state.get("opt_stage") == stage and step > 0:
            opt.load_state_dict(state["opt"])
        params = [p for g in opt.param_groups for p in g["params"]]
        running: dict[str, float] = {}
        first = TRAIN_SEED0 + SEED_BLOCK[stage] * 10_000_000
        while step < total:
            if (minutes is not None and elapsed() + last_eval_s / 60 >= minutes) or \
                    (max_steps is not None and taken >= max_steps):
                log(f"stopping at stage {stage} step {step}/{total} ({elapsed():.1f} min in this piece)")
                return finish(False, opt)
            t0 = time.perf_counter()
            rewarm = 1.0 if rewarm_from is None else min(1.0, (step - rewarm_from + 1) / REWARM)
            for g in opt.param_groups:
                g["lr"] = rewarm * lr_at(step, total, g["peak"], warmup=min(recipe.warmup, max(1, total // 10)))
            autocast = torch.autocast("cuda" if str(device).startswith("cuda") else "cpu", dtype=torch.bfloat16,
                                      enabled=bf16)
            if stage == "tower":
                n = recipe.tower_batch
                scenes = [shapes.scene(s) for s in range(first + step * n, first + (step + 1) * n)]
                with autocast:
                    loss, parts = tower_loss(clip, chead, reference, proc, scenes, recipe, recipe.seed, device)
            else:
                n = recipe.batch_size
                seeds = list(range(first + step * n, first + (step + 1) * n))
                drop_gen.manual_seed(recipe.seed * 7919 + step)
                b = batch(vlm, seeds, random.Random(recipe.seed * 7919 + step), recipe.caption_p)
                with autocast:
                    loss, parts = llm_loss(vlm, head, {k: v.to(device) for k, v in b.items()}, recipe.aux_weight)
            optimizer_step(opt, params, loss, parts, running, smoothing=0.9)
            step, taken = step + 1, taken + 1
            spent_s, count = step_time.get(stage, (0.0, 0))
            step_time[stage] = (spent_s + time.perf_counter() - t0, count + 1)
            if step % 10 == 0:
                log(f"{stage} {step}/{total} " + " ".join(f"{k} {v:.3f}" for k, v in running.items()) +
                    f" {elapsed():.1f} min")
            if step % eval_every[stage] == 0 or step == total:
                evaluate()
                history[-1]["running"] = {k: round(v, 4) for k, v in running.items()}
                if stage == "tower" and step < total and tower_done(history[-1], recipe.tower_target):
                    history.append({"stage": stage, "step": step, "event": f"targets reached (probes and "
                                    f"retrieval@1 >= {recipe.tower_target}): the tower stage ends early"})
                    log(history[-1]["event"])
                    break
            if step % save_every == 0 or step == total:
                _save(ckpt, recipe, stage, step, clip, chead, vlm, head, opt, history, spent + elapsed(), rewarm_from)
        stage, step = (STAGES[STAGES.index(stage) + 1] if stage != STAGES[-1] else "done"), 0
        state, rewarm_from = None, None
        _save(ckpt, recipe, stage, 0, clip, chead, vlm, head, None, history, spent + elapsed())
    return finish(True, None)


# -- from an exported run to the shipped model -------------------------------------------------------
def from_export(weights: str | Path, before_training: bool = False):
    """(the grown demo VLM, its CLIP, its recipe) from an `export_weights` file of this recipe, on the CPU
    in float32. `before_training`: the grown model before any instruct step (the small decoder grown by
    `grow` with the same seed and noise, reading the same contrastive tower, which the instruct stage
    keeps frozen): the control every layer-wise figure of the trained model is compared with."""
    from ...errors import VTAError

    state = torch.load(weights, weights_only=False, map_location="cpu")
    if state.get("kind") != "grow" or "llava" not in state:
        raise VTAError(f"{weights} is not an exported train_grow run that reached the instruct stage.")
    fields = set(GrowRecipe.__dataclass_fields__)
    recipe = GrowRecipe(**{k: v for k, v in state["recipe"].items() if k in fields})
    small = shipped()
    clip = tower_clip(small)
    clip.load_state_dict({k: v.float() for k, v in state["clip"].items()})
    vlm = _llava(clip, small, recipe, "cpu")
    if not before_training:
        vlm.model.load_state_dict({k: v.float() for k, v in state["llava"].items()})
    vlm.model.eval().requires_grad_(False)
    return vlm, clip.eval(), recipe


def save_model(vlm, clip, target: str | Path, training_json: str | Path | None = None,
               n_samples: int = 500, log=print) -> Path:
    """`vlm` in Hugging Face format at `target` (float16, shards of at most 15 MB), its CLIP (vision tower
    + text encoder, with a CLIP processor) at `target/clip`, the run's `training_json` copied in, and
    `metrics.json` (`train_demo.report` on `n_samples` held-out samples)."""
    import shutil

    from .train_demo import report

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    vlm.model.to(torch.float16).save_pretrained(target, max_shard_size="15MB")
    vlm.model.float()
    vlm.processor.save_pretrained(target)
    clip.to(torch.float16).save_pretrained(target / "clip", max_shard_size="15MB")
    clip.float()
    transformers.CLIPProcessor(image_processor=vlm.processor.image_processor,
                               tokenizer=vlm.processor.tokenizer).save_pretrained(target / "clip")
    if training_json is not None:
        shutil.copyfile(training_json, target / "training.json")
    report(vlm, target, n_samples=n_samples, log=log)
    return target
