"""Training recipe of the deep demo model (`vtanalysis train-demo`), in LLaVA's stages, resumable.

    clip      a CLIP from scratch: the vision tower (`demo.DEEP`) and a 3-layer text encoder learn
              scene/caption pairs with the symmetric InfoNCE loss and a learned temperature, as
              open_clip trains (captions: `shapes.caption`, every object's size, colour, shape and
              place). Our addition: a per-patch attribute loss (shape, colour, size, column, row of
              the object under each patch, read at the feature layer by a linear head, weight
              `patch_weight`; object and background patches weigh half each,
              `balanced_patch_loss`), the dense signal a from-scratch ViT on synthetic scenes needs. A share
              `crop_p` of each batch pairs an object's box crop with a phrase about it ("small red
              circle", "circle", "red object", ...), as region-text pairs do for grounding CLIPs, so
              that `analysis.grounding` can rank an image's object crops against a question.
    align     LLaVA stage 1: the frozen tower's features, the projector and the decoder learn to
              caption ("describe the image ." -> caption). Unlike LLaVA the decoder trains here
              too: ours has no language pretraining to keep.
    instruct  LLaVA stage 2: conversations of up to eight questions (`train_demo.conversation`, a
              caption first with probability `caption_p`), loss on the answers; projector and
              decoder train, the tower stays frozen. Both LLM stages add `aux_weight` x the patch
              loss of `train_demo.patch_loss` on the projected tokens (attributes read against the
              decoder's word embeddings, positions as scalars along E[right] - E[left]).

Every stage has its own AdamW and cosine schedule (LLaVA's stages are separate runs). The state
lands in `out/checkpoint.pt` every `save_every` steps (atomically) and training resumes from it;
`minutes` stops a run cleanly after that much wall time, so a long recipe is done in pieces (a
CPU session, or a GPU call limited to 10 minutes). Held-out scenes (seeds below
`train_demo.TRAIN_SEED0`) are never trained on; each stage draws its own seed range.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers

from ...data import shapes
from ..._core.files import atomic_write
from ...errors import VTAError
from .. import demo
from .train_demo import (CAPTION_PROMPT, TRAIN_SEED0, batch, collate, encode, grid_side, lr_at, patch_labels,
                         patch_loss, position_head, quick_eval)

STAGES = ("clip", "align", "instruct")
SEED_RANGE = 10_000_000  # each stage's scenes start at TRAIN_SEED0 + stage index x this
REWARM = 50  # steps of linear learning-rate warm-up for an optimizer restarted mid-stage


@dataclass
class Recipe:
    """Steps, batch sizes and learning rates of the three stages (the shipped model's are recorded
    in its `training.json`)."""
    clip_steps: int = 1000
    clip_batch: int = 128
    clip_lr: float = 2e-3
    clip_weight_decay: float = 0.01  # at 1e-3 / 0.1 the tower read shape at 0.33 on object patches after 500 steps
    patch_weight: float = 1.0
    crop_p: float = 0.25
    align_steps: int = 300
    instruct_steps: int = 4000
    batch_size: int = 32
    lr: float = 1e-3
    aux_weight: float = 0.5
    caption_p: float = 0.2
    warmup: int = 100
    seed: int = 0

    def steps(self, stage: str) -> int:
        return {"clip": self.clip_steps, "align": self.align_steps, "instruct": self.instruct_steps}[stage]


# -- the contrastive stage ---------------------------------------------------------------------------
ATTRIBUTE_CLASSES = (1 + len(shapes.SHAPES), 1 + len(shapes.COLORS), 1 + len(shapes.RADIUS))


def patch_head(clip: transformers.CLIPModel) -> torch.nn.Linear:
    """Logits of shape, colour, size (0 = background), column and row per patch (dropped after training)."""
    g = clip.config.vision_config.image_size // clip.config.vision_config.patch_size
    return torch.nn.Linear(clip.config.vision_config.hidden_size, sum(ATTRIBUTE_CLASSES) + 2 * g)


def caption_ids(tok, texts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] ids of `texts`, each ending with "</s>" (the text encoder pools there), and the mask."""
    enc = tok([t + " </s>" for t in texts], add_special_tokens=False, padding=True, return_tensors="pt")
    return enc.input_ids.to(device), enc.attention_mask.to(device)


def object_crop(sc: shapes.Scene, rng: random.Random) -> tuple[np.ndarray, str]:
    """The box crop of one of `sc`'s objects (as `Grounder.choose` crops a mask) and a phrase naming
    it by some of its attributes, ending with "."."""
    o = sc.objects[rng.randrange(len(sc.objects))]
    ys, xs = np.nonzero(o.mask)
    crop = sc.image[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    words = rng.choice([(o.size, o.color, o.shape), (o.color, o.shape), (o.shape,), (o.color, "object"),
                        (o.size, o.shape), (o.size, "object")])
    return crop, " ".join(words) + " ."


def clip_pairs(scenes: list[shapes.Scene], crop_p: float, seed: int) -> tuple[list[np.ndarray], list[str], int]:
    """Images and texts of one contrastive batch: the first scenes whole with their captions, the last
    round(`crop_p` x B) as object crops with phrases; also the number of whole scenes."""
    whole = len(scenes) - round(crop_p * len(scenes))
    images, texts = [sc.image for sc in scenes[:whole]], [shapes.caption(sc) for sc in scenes[:whole]]
    for sc in scenes[whole:]:
        crop, text = object_crop(sc, random.Random(seed * 7919 + sc.seed))
        images.append(crop)
        texts.append(text)
    return images, texts, whole


def clip_loss(clip: transformers.CLIPModel, head: torch.nn.Linear, proc, scenes: list[shapes.Scene],
              patch_weight: float, device, crop_p: float = 0.0, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """InfoNCE over the batch (image i <-> text i, both directions, temperature exp(logit_scale)
    clamped at 100 as open_clip does; pairs from `clip_pairs`) + `patch_weight` x the mean
    per-patch cross-entropy on the whole scenes."""
    images, texts, whole = clip_pairs(scenes, crop_p, seed)
    pixels = proc.image_processor(images, return_tensors="pt")["pixel_values"].to(device)
    ids, mask = caption_ids(proc.tokenizer, texts, device)
    vision = clip.vision_model(pixel_values=pixels, output_hidden_states=True)
    image = F.normalize(clip.visual_projection(vision.pooler_output), dim=-1)
    text = F.normalize(clip.text_projection(clip.text_model(input_ids=ids, attention_mask=mask).pooler_output), dim=-1)
    logits = clip.logit_scale.exp().clamp(max=100) * image @ text.T  # [B, B]
    target = torch.arange(len(scenes), device=device)
    contrastive = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    labels = torch.stack([patch_labels(sc, demo.PATCH) for sc in scenes[:whole]]).to(device)  # [W, 5, N]
    feats = vision.hidden_states[demo.DEEP.feature_layer][:whole, 1:]  # the tokens LLaVA will read
    patch = balanced_patch_loss(patch_parts(head, feats), labels)
    accuracy = (logits.argmax(-1) == target).float().mean()
    return contrastive + patch_weight * patch, {"contrastive": contrastive, "patch": patch, "retrieval": accuracy}


def patch_parts(head: torch.nn.Linear, feats: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`head`'s logits on feats [B, N, d], split as `patch_labels` rows: shape, colour, size, column, row."""
    g = int(feats.shape[1] ** 0.5)
    return head(feats).split([*ATTRIBUTE_CLASSES, g, g], dim=-1)


def balanced_patch_loss(parts: tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
    """Mean over the five `patch_labels` rows of the per-patch cross-entropy; for shape, colour and size
    the object patches and the background patches weigh half each.

    Unweighted, background (about 85 % of patches) dominates: a first recipe read shape at chance
    (0.26) on object patches after 1,000 steps although the loss looked low (0.09), and the LLM
    could not answer shape questions. Telling a circle's inner patch from a square's needs context,
    which only a loss on the object patches asks for.
    """
    obj = (labels[:, 0] > 0).flatten().float()  # [B*N]
    share = torch.stack([obj.sum(), (1 - obj).sum()]).clamp(min=1)
    weight = 0.5 * (obj / share[0] + (1 - obj) / share[1])  # sums to 1 (when both kinds occur)
    losses = []
    for k, logits in enumerate(parts):
        ce = F.cross_entropy(logits.flatten(0, 1), labels[:, k].flatten(), reduction="none")
        losses.append((ce * weight).sum() / weight.sum() if k < len(ATTRIBUTE_CLASSES) else ce.mean())
    return sum(losses) / len(losses)


@torch.no_grad()
def object_patch_accuracy(clip, head: torch.nn.Linear, proc, n: int = 128, device="cpu") -> dict:
    """Accuracy of the patch `head` on the object patches of held-out scenes 0 .. n-1, per attribute
    (shape, colour, size; chance about 1/4, 1/8, 1/3): what the LLM can read from one image token."""
    scenes = [shapes.scene(s) for s in range(n)]
    pixels = proc.image_processor([sc.image for sc in scenes], return_tensors="pt")["pixel_values"].to(device)
    labels = torch.stack([patch_labels(sc, demo.PATCH) for sc in scenes]).to(device)
    feats = clip.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[demo.DEEP.feature_layer]
    parts, obj = patch_parts(head, feats[:, 1:]), labels[:, 0] > 0
    return {f"patch_{name}": float((parts[k].argmax(-1) == labels[:, k])[obj].float().mean())  # ok-host: once per eval
            for k, name in enumerate(("shape", "color", "size"))}


@torch.no_grad()
def clip_eval(clip, proc, n: int = 256, device="cpu", head: torch.nn.Linear | None = None) -> dict:
    """Held-out image->caption retrieval accuracy among `n` scenes (chance 1/n), and grounding@1: over
    the held-out questions about named objects, how often `analysis.grounding.Grounder` ranks a
    target object's crop first among the scene's objects against the question (chance: `grounding_chance`)."""
    from ...analysis.grounding import Grounder, HFClip

    clip.eval()
    scenes = [shapes.scene(s) for s in range(n)]
    pixels = proc.image_processor([sc.image for sc in scenes], return_tensors="pt")["pixel_values"].to(device)
    ids, mask = caption_ids(proc.tokenizer, [shapes.caption(sc) for sc in scenes], device)
    image = F.normalize(clip.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    text = F.normalize(clip.get_text_features(input_ids=ids, attention_mask=mask).pooler_output, dim=-1)
    hits = (image @ text.T).argmax(-1) == torch.arange(n, device=device)
    hf = HFClip(clip, transformers.CLIPProcessor(image_processor=proc.image_processor, tokenizer=proc.tokenizer),
                text_suffix=" </s>")
    grounder, found, chance = Grounder(None, hf, hf.preprocess, hf.tokenizer), [], []
    for sc in scenes[: n // 4]:
        masks = np.stack([o.mask for o in sc.objects])
        for q in shapes.questions(sc, sc.seed, types=("color", "shape", "small")):
            found.append(grounder.choose(sc.image, masks, q.question)[0] in q.targets)
            chance.append(len(q.targets) / len(sc.objects))
    patches = {} if head is None else object_patch_accuracy(clip, head, proc, device=device)
    clip.train()
    return {"retrieval@1": float(hits.float().mean()), "n": n,  # ok-host: once per evaluation
            "grounding@1": float(np.mean(found)), "grounding_chance": float(np.mean(chance)), "grounding_n": len(found),
            **patches}


# -- the LLM stages ----------------------------------------------------------------------------------
def llava_from(clip: transformers.CLIPModel, proc, seed: int, device="cpu"):
    """A DEEP demo LLaVA whose vision tower is `clip`'s vision model, frozen."""
    from ..vlm import VLM

    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration(demo.config(proc, demo.DEEP))
    model.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    model.model.vision_tower.requires_grad_(False)
    return VLM(model.to(device), proc, name="demo")


def caption_batch(vlm, seeds: list[int]) -> dict:
    """Stage-1 batch: each scene's caption as the only answer."""
    tok, n_img = vlm.processor.tokenizer, grid_side(vlm) ** 2
    scenes = [shapes.scene(s) for s in seeds]
    rows = [encode(tok, n_img, [(CAPTION_PROMPT, shapes.caption(sc))]) for sc in scenes]
    return collate(vlm, rows, [sc.image for sc in scenes], [patch_labels(sc, demo.PATCH) for sc in scenes])


def llm_loss(vlm, head, b: dict, aux_weight: float) -> tuple[torch.Tensor, dict]:
    """Next-token loss on the labelled tokens + `aux_weight` x the patch loss on the projected tokens."""
    with torch.no_grad():  # the tower is frozen: no graph through it
        feats = vlm.model.model.vision_tower(b["pixel_values"], output_hidden_states=True)
    feats = feats.hidden_states[vlm.config.vision_feature_layer][:, 1:]
    projected = vlm.model.model.multi_modal_projector(feats)
    embeds = vlm.model.get_input_embeddings()(b["input_ids"])
    image_mask = (b["input_ids"] == vlm.config.image_token_id).unsqueeze(-1)
    embeds = embeds.masked_scatter(image_mask, projected.to(embeds.dtype))
    logits = vlm.model(inputs_embeds=embeds, attention_mask=b["attention_mask"]).logits
    lm = F.cross_entropy(logits[:, :-1].flatten(0, 1), b["labels"][:, 1:].flatten(), ignore_index=-100)
    aux = patch_loss(vlm, head, projected, b["patch_labels"], relation=True)
    return lm + aux_weight * aux, {"lm": lm, "patch": aux}


# -- the staged, resumable loop ----------------------------------------------------------------------

def resume_state(ckpt_path: Path, resume_from, device) -> tuple[Path, dict | None]:
    """(where training resumes from, its saved state or None): the run's own checkpoint when it has
    one, else `resume_from` (an `export_weights` file of this recipe), else nothing (a fresh start)."""
    source = ckpt_path if ckpt_path.is_file() or resume_from is None else Path(resume_from)
    if source != ckpt_path and not source.is_file():
        raise VTAError(f"resume_from={source}: no such file (an `export_weights` file of this recipe).")
    return source, torch.load(source, weights_only=False, map_location=device) if source.is_file() else None


def optimizer_step(opt, params, loss, parts: dict, running: dict, smoothing: float) -> None:
    """One AdamW step on `loss` (gradients clipped to norm 1), then the running means of the loss and
    its `parts` for the log: one host read per optimizer step, outside any forward."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    for k, v in {"loss": loss, **parts}.items():
        x = float(v.detach())  # ok-host: training log, once per step
        running[k] = x if k not in running else smoothing * running[k] + (1 - smoothing) * x


def train(out: str | Path = "runs/demo-deep", recipe: Recipe | None = None, *, device: str = "cpu",
          minutes: float | None = None, max_steps: int | None = None, save_every: int = 100, eval_every: int = 500,
          eval_scenes: int = 100,
          threads: int | None = None, bf16: bool = True, resume_from: str | Path | None = None, log=print) -> dict:
    """Run (or resume) the recipe; returns {"finished", "stage", "step", "history", "minutes", "vlm", "clip"}.

    `minutes` bounds this call's wall time and `max_steps` its optimizer steps (over all stages): when
    either is reached the state is saved and `finished` is False, and calling again with the same
    `out` goes on exactly where it stopped. `recipe` must match the checkpoint's (a `VTAError` otherwise).
    `bf16`: the forward passes under bfloat16 autocast (weights and optimizer stay fp32; 1.6x faster
    on a CPU with AVX512-BF16, the usual mixed precision on a GPU).
    `resume_from`: a file of `export_weights`, used when `out` has no checkpoint yet: the run goes on
    from its stage and step with a fresh optimizer, its learning rate re-warmed over `REWARM` steps.
    """

    recipe = recipe or Recipe()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    proc = demo.processor()
    torch.manual_seed(recipe.seed)
    clip = transformers.CLIPModel(demo.clip_config(proc)).to(device)
    chead = patch_head(clip).to(device)
    ckpt_path = out / "checkpoint.pt"
    source, state = resume_state(ckpt_path, resume_from, device)
    if state is not None and state["recipe"] != asdict(recipe):
        raise VTAError(f"{ckpt_path} was written by another recipe ({state['recipe']}); resume with that recipe "
                       "or train into a new folder.")
    stage, step = ("clip", 0) if state is None else (state["stage"], state["step"])
    history, spent = ([], 0.0) if state is None else (state["history"], state["minutes"])
    # the step a fresh optimizer took over mid-stage (resumed from exported weights), kept across stops
    rewarm_from = None if state is None else state.get("rewarm_from")
    if state is not None:
        clip.load_state_dict(state["clip"])
        if step > 0 and state.get("opt") is None:
            rewarm_from = step
            history.append({"stage": stage, "step": step, "event": f"resumed from {source.name} (weights only): "
                            f"fresh optimizer, learning rate re-warmed over {REWARM} steps"})
        log(f"resumed from {source}: stage {stage}, step {step}, {spent:.1f} min so far")
    vlm = head = None
    t_start, taken = time.perf_counter(), 0

    def elapsed() -> float:
        return spent + (time.perf_counter() - t_start) / 60

    while stage != "done":
        total = recipe.steps(stage)
        if stage == "clip":
            params, lr = [*clip.parameters(), *chead.parameters()], recipe.clip_lr
            if state is not None and "clip_head" in state:
                chead.load_state_dict(state["clip_head"])
        else:
            if vlm is None:
                vlm = llava_from(clip, proc, recipe.seed, device)
                head = position_head(vlm).to(device)
                if state is not None and "llava" in state:
                    vlm.model.load_state_dict(state["llava"])
                    head.load_state_dict(state["head"])
                vlm.model.train()
            params, lr = [p for p in [*vlm.model.parameters(), *head.parameters()] if p.requires_grad], recipe.lr
        decay = recipe.clip_weight_decay if stage == "clip" else 0.01
        opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=decay)
        if state is not None and state.get("opt_stage") == stage and step > 0:
            opt.load_state_dict(state["opt"])
        running: dict[str, float] = {}
        first = TRAIN_SEED0 + STAGES.index(stage) * SEED_RANGE
        while step < total:
            if (minutes is not None and elapsed() - spent >= minutes) or (max_steps is not None and taken >= max_steps):
                _save(ckpt_path, recipe, stage, step, clip, chead, vlm, head, opt, history, elapsed(), rewarm_from)
                log(f"stopped at stage {stage} step {step}/{total} ({elapsed() - spent:.1f} min in this call); "
                    "run again to resume")
                return {"finished": False, "stage": stage, "step": step, "history": history, "minutes": elapsed(),
                        "vlm": vlm, "clip": clip}
            rewarm = 1.0 if rewarm_from is None else min(1.0, (step - rewarm_from + 1) / REWARM)
            for group in opt.param_groups:
                group["lr"] = rewarm * lr_at(step, total, lr, warmup=min(recipe.warmup, max(1, total // 10)))
            autocast = torch.autocast("cuda" if str(device).startswith("cuda") else "cpu", dtype=torch.bfloat16,
                                      enabled=bf16)
            if stage == "clip":
                n = recipe.clip_batch
                scenes = [shapes.scene(s) for s in range(first + step * n, first + (step + 1) * n)]
                with autocast:
                    loss, parts = clip_loss(clip, chead, proc, scenes, recipe.patch_weight, device, recipe.crop_p,
                                            recipe.seed)
            else:
                n = recipe.batch_size
                seeds = list(range(first + step * n, first + (step + 1) * n))
                b = caption_batch(vlm, seeds) if stage == "align" else \
                    batch(vlm, seeds, random.Random(recipe.seed * 7919 + step), recipe.caption_p)
                with autocast:
                    loss, parts = llm_loss(vlm, head, {k: v.to(device) for k, v in b.items()}, recipe.aux_weight)
            optimizer_step(opt, params, loss, parts, running, smoothing=0.95)
            step, taken = step + 1, taken + 1
            if step % 25 == 0:
                log(f"{stage} {step}/{total} " + " ".join(f"{k} {v:.3f}" for k, v in running.items()) +
                    f" {elapsed():.1f} min")
            if step % eval_every == 0 or step == total:
                metrics = clip_eval(clip, proc, device=device, head=chead) if stage == "clip" else \
                    quick_eval(vlm, n_scenes=eval_scenes) if stage == "instruct" else {}
                history.append({"stage": stage, "step": step, "minutes": elapsed(), **running, **metrics})
                log(json.dumps(history[-1]))
            if step % save_every == 0 or step == total:
                _save(ckpt_path, recipe, stage, step, clip, chead, vlm, head, opt, history, elapsed(), rewarm_from)
        stage, step = (STAGES[STAGES.index(stage) + 1] if stage != STAGES[-1] else "done"), 0
        state, rewarm_from = None, None  # the next stage starts from the models in memory, with a fresh optimizer
        _save(ckpt_path, recipe, stage, 0, clip, chead, vlm, head, None, history, elapsed())
    if vlm is None:  # resumed a finished run
        vlm = llava_from(clip, proc, recipe.seed, device)
        vlm.model.load_state_dict(torch.load(ckpt_path, weights_only=False, map_location=device)["llava"])
    vlm.model.eval()
    clip.eval()
    return {"finished": True, "stage": "done", "step": 0, "history": history, "minutes": elapsed(), "vlm": vlm,
            "clip": clip, "bf16": bf16}


def _save(path, recipe, stage, step, clip, chead, vlm, head, opt, history, minutes, rewarm_from=None) -> None:
    state = {"rewarm_from": rewarm_from, "recipe": asdict(recipe), "stage": stage, "step": step,
             "clip": clip.state_dict(),
             "clip_head": chead.state_dict(), "history": history, "minutes": minutes,
             "opt_stage": stage if opt is not None else None, "opt": opt.state_dict() if opt is not None else None}
    if vlm is not None:
        state["llava"], state["head"] = vlm.model.state_dict(), head.state_dict()
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def export_weights(out: str | Path, target: str | Path) -> Path:
    """`out/checkpoint.pt` without its optimizer state and in float16 (about half its size): what a
    run keeps between sessions whose scratch space does not survive (and a GPU call returns), for
    `train(resume_from=target)`."""
    state = torch.load(Path(out) / "checkpoint.pt", weights_only=False, map_location="cpu")
    state["opt"], state["opt_stage"] = None, None
    for key in ("clip", "clip_head", "llava", "head"):
        if key in state:
            state[key] = {k: v.half() if v.is_floating_point() else v for k, v in state[key].items()}
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda tmp: torch.save(state, tmp))
    return target


def save(result: dict, target: str | Path, recipe: Recipe, device: str) -> Path:
    """The trained LLaVA in Hugging Face format at `target` (shards of at most 15 MB) and its CLIP
    (vision + text encoder, with a tokenizer and image processor) at `target/clip`, with
    `training.json` (recipe, stage history, wall minutes, device)."""
    target = Path(target)
    vlm, clip = result["vlm"], result["clip"]
    vlm.model.save_pretrained(target, max_shard_size="15MB")
    vlm.processor.save_pretrained(target)
    clip.save_pretrained(target / "clip", max_shard_size="15MB")
    transformers.CLIPProcessor(image_processor=vlm.processor.image_processor,
                               tokenizer=vlm.processor.tokenizer).save_pretrained(target / "clip")
    dev = torch.cuda.get_device_name() if str(device).startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    (target / "training.json").write_text(json.dumps(
        {"recipe": asdict(recipe), "device": dev, "precision": "bf16 autocast" if result.get("bf16") else "fp32",
         "wall_minutes": result["minutes"], "history": result["history"],
         "torch": torch.__version__, "transformers": transformers.__version__}, indent=1))
    return target
