"""Training recipe of the demo model (`vtanalysis train-demo`), reproducible from a seed.

Each training sample is one generated scene and a short conversation about it:
    USER: <image>\\n{q1} ASSISTANT: {a1} </s> USER: {q2} ASSISTANT: {a2} </s> ...
with the loss on answer tokens only. With probability `caption_p` (decaying from 0.6 to 0.2) the
first turn is the dense caption ("describe the image ." -> every object's size, colour, shape
and position, loss on every caption token, as in LLaVA's first stage); the remaining turns are
all the question types the scene supports, shuffled. A conversation amortises the 144 image
tokens over several supervised answers. Held-out scenes (seeds below `TRAIN_SEED0`) are never
trained on. Checkpoints land in `out/checkpoint.pt` every `save_every` steps and training resumes
from there.
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import shapes
from .models import demo

TRAIN_SEED0 = 1_000_000  # training scenes are seeds >= this; held-out scenes are below
CAPTION_PROMPT = "describe the image ."


def encode(tok, n_image_tokens: int, turns: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 outside answers) of a conversation; the image opens the first turn."""
    image_id = tok.convert_tokens_to_ids("<image>")
    ids, labels = [], []
    for i, (question, answer) in enumerate(turns):
        prompt = tok("USER: " + ("<image>\n" if i == 0 else "") + question + " ASSISTANT:",
                     add_special_tokens=False).input_ids
        if i == 0:
            at = prompt.index(image_id)
            prompt = prompt[:at] + [image_id] * n_image_tokens + prompt[at + 1:]
        reply = tok(answer + " </s>", add_special_tokens=False).input_ids
        ids += prompt + reply
        labels += [-100] * len(prompt) + reply
    return ids, labels


def conversation(seed: int, rng: random.Random, caption_p: float) -> tuple[shapes.Scene, list[tuple[str, str]]]:
    sc = shapes.scene(seed)
    qa = [(q.question, q.answer) for q in shapes.questions(sc, seed)]
    rng.shuffle(qa)
    if rng.random() < caption_p:
        qa = [(CAPTION_PROMPT, shapes.caption(sc))] + qa[:3]
    return sc, qa


def batch(vlm, seeds: list[int], rng: random.Random, caption_p: float) -> dict:
    tok, n_img = vlm.processor.tokenizer, demo_image_tokens(vlm)
    images, rows, patches = [], [], []
    for s in seeds:
        sc, turns = conversation(s, rng, caption_p)
        images.append(sc.image)
        patches.append(patch_labels(sc, demo.PATCH))
        rows.append(encode(tok, n_img, turns))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, (i, l) in enumerate(rows):
        ids[b, :len(i)], labels[b, :len(l)], mask[b, :len(i)] = torch.tensor(i), torch.tensor(l), 1
    pixels = vlm.processor.image_processor(images, return_tensors="pt")["pixel_values"]
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels, "labels": labels,
            "patch_labels": torch.stack(patches)}


# -- stage 0: dense per-patch supervision of the vision tower ----------------------------------------
PATCH_CLASSES = (len(shapes.SHAPES) + 1, len(shapes.COLORS) + 1, len(shapes.RADIUS) + 1)  # 0 = background


def patch_labels(sc: shapes.Scene, patch: int) -> torch.Tensor:
    """[3, G*G] long: shape, colour and size class (0 = background) of the object covering each patch.

    A patch belongs to the object that covers most of it, if that object covers at least 20% of
    it (a small object, ~11 px across, still labels the patches it sits on).
    """
    g = sc.image.shape[0] // patch
    labels, best = torch.zeros(3, g * g, dtype=torch.long), np.full(g * g, 0.2)
    for o in sc.objects:
        cover = o.mask.reshape(g, patch, g, patch).mean(axis=(1, 3)).ravel()
        take = torch.from_numpy(cover >= best)
        best = np.maximum(best, cover)
        labels[0, take] = shapes.SHAPES.index(o.shape) + 1
        labels[1, take] = list(shapes.COLORS).index(o.color) + 1
        labels[2, take] = list(shapes.RADIUS).index(o.size) + 1
    return labels


def patch_head(vlm) -> torch.nn.Linear:
    """The stage-0 classifier on the vision features LLaVA feeds its projector (dropped after training)."""
    return torch.nn.Linear(vlm.config.vision_config.hidden_size, sum(PATCH_CLASSES))


def patch_loss(head: torch.nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of shape, colour and size per patch; features [B, N, d], labels [B, 3, N]."""
    logits = head(features).split(PATCH_CLASSES, dim=-1)
    return sum(F.cross_entropy(lg.flatten(0, 1), labels[:, k].flatten()) for k, lg in enumerate(logits)) / 3


def vision_features(vlm, pixel_values: torch.Tensor) -> torch.Tensor:
    """[B, N, d] the vision tower's `vision_feature_layer` output without [CLS] (what the projector reads)."""
    out = vlm.model.model.vision_tower(pixel_values, output_hidden_states=True)
    return out.hidden_states[vlm.config.vision_feature_layer][:, 1:]


def demo_image_tokens(vlm) -> int:
    v = vlm.config.vision_config
    return (v.image_size // v.patch_size) ** 2


def loss_of(vlm, b: dict) -> torch.Tensor:
    logits = vlm.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                       pixel_values=b["pixel_values"]).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), b["labels"][:, 1:].flatten(), ignore_index=-100)


@torch.no_grad()
def quick_eval(vlm, n_scenes: int = 200) -> dict:
    """First-answer-token accuracy per type on held-out scenes 0 .. n_scenes - 1 (one question each turn-0)."""
    tok, n_img = vlm.processor.tokenizer, demo_image_tokens(vlm)
    vlm.model.eval()
    hits: dict[str, list[int]] = {}
    for s in range(n_scenes):
        sc = shapes.scene(s)
        qs = shapes.questions(sc, s)
        rows = [encode(tok, n_img, [(q.question, q.answer)]) for q in qs]
        prompt_len = [next(i for i, x in enumerate(labels) if x != -100) for _, labels in rows]
        width = max(len(r[0]) for r in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id)
        for b, (i, _) in enumerate(rows):
            ids[b, :len(i)] = torch.tensor(i)
        pixels = vlm.processor.image_processor([sc.image] * len(rows), return_tensors="pt")["pixel_values"]
        logits = vlm.model(input_ids=ids, pixel_values=pixels).logits
        for b, q in enumerate(qs):
            pred = int(logits[b, prompt_len[b] - 1].argmax())
            hits.setdefault(q.type, []).append(int(pred == rows[b][0][prompt_len[b]]))
    vlm.model.train()
    per_type = {t: sum(h) / len(h) for t, h in sorted(hits.items())}
    return {"accuracy": sum(map(sum, hits.values())) / sum(map(len, hits.values())), "per_type": per_type}


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))


def train(out: str | Path = "runs/demo-train", *, steps: int = 3000, vision_steps: int = 1500,
          batch_size: int = 32, lr: float = 2e-3, aux_weight: float = 0.5, seed: int = 0, eval_every: int = 500,
          save_every: int = 250, threads: int | None = None, log=print) -> dict:
    """Train (or resume) the demo model; returns the quick-eval history, wall minutes and the model.

    Stage 0 (`vision_steps` steps of 2 x `batch_size` scenes): the vision tower alone learns each
    patch's shape, colour and size class (`patch_loss`), the dense signal a from-scratch ViT needs
    to tell shapes apart. Stage 1 (`steps` steps): the whole LLaVA on conversations (`loss_of`),
    plus `aux_weight` x the same patch loss on the features the projector reads. One AdamW and
    one cosine schedule span both stages; the patch head is dropped after training.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    vlm = demo.untrained(seed)
    model, head = vlm.model, patch_head(vlm)
    model.train()
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    ckpt, history, start, elapsed = out / "checkpoint.pt", [], 0, 0.0
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["opt"])
        start, history, elapsed = state["step"], state["history"], state["elapsed"]
        log(f"resumed at step {start}")
    features: list[torch.Tensor] = []
    # the projector's input is what the auxiliary patch loss reads; quick_eval (eval mode) needs none
    model.model.multi_modal_projector.register_forward_pre_hook(
        lambda m, args: features.append(args[0]) if m.training else None)
    t0, total, running = time.perf_counter() - elapsed, vision_steps + steps, None
    for step in range(start, total):
        rng = random.Random(seed * 7919 + step)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, lr, warmup=300)
        if step < vision_steps:
            first = TRAIN_SEED0 + step * 2 * batch_size
            scenes = [shapes.scene(s) for s in range(first, first + 2 * batch_size)]
            pixels = vlm.processor.image_processor([sc.image for sc in scenes], return_tensors="pt")["pixel_values"]
            labels = torch.stack([patch_labels(sc, demo.PATCH) for sc in scenes])
            loss = patch_loss(head, vision_features(vlm, pixels), labels)
        else:
            k = step - vision_steps
            caption_p = 0.6 - 0.4 * min(1.0, k / (0.5 * steps))
            seeds = [TRAIN_SEED0 + vision_steps * 2 * batch_size + k * batch_size + i for i in range(batch_size)]
            features.clear()
            b = batch(vlm, seeds, rng, caption_p)
            loss = loss_of(vlm, b) + aux_weight * patch_loss(head, features[0], b["patch_labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running = float(loss.detach()) if running is None else 0.98 * running + 0.02 * float(loss.detach())
        done = step + 1
        if done == vision_steps:
            running = None  # the loss changes meaning with the stage
        if done > vision_steps and ((done - vision_steps) % eval_every == 0 or done == total):
            metrics = quick_eval(vlm)
            history.append({"step": done, "loss": running, "minutes": (time.perf_counter() - t0) / 60, **metrics})
            log(json.dumps(history[-1]))
        elif done % 50 == 0 and running is not None:
            stage = 0 if done <= vision_steps else 1
            log(f"stage {stage} step {done}/{total} loss {running:.3f} {(time.perf_counter() - t0) / 60:.1f} min")
        if done % save_every == 0 or done == total:
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "head": head.state_dict(), "opt": opt.state_dict(), "step": done,
                        "history": history, "elapsed": time.perf_counter() - t0}, tmp)
            tmp.replace(ckpt)
    model.eval()
    return {"history": history, "minutes": (time.perf_counter() - t0) / 60, "vlm": vlm}


def report(vlm, folder: str | Path, n_samples: int = 500, log=print) -> dict:
    """Held-out accuracy (overall, per type) and attention-in-mask per layer, written to folder/metrics.json.

    Held-out scenes are seeds 0 .. (below `TRAIN_SEED0`), written in the standard dataset format.
    """
    import tempfile

    from .analysis import attention_in_mask
    from .data.dataset import read_samples
    from .evaluate import evaluate

    data = Path(tempfile.mkdtemp(prefix="vta-demo-heldout-"))
    shapes.write_dataset(data, n_images=n_samples // 4 + 1, seed=0, progress=False)
    samples = read_samples(data)[:n_samples]
    acc = evaluate(vlm, samples, progress=False)
    acc.pop("predictions")
    masks = [shapes.target_mask(s) for s in samples]
    attn = attention_in_mask(vlm, samples, masks, progress=False)
    metrics = {"heldout": {"seeds": f"0..{n_samples // 4}", **acc}, "attention_in_mask": attn}
    (Path(folder) / "metrics.json").write_text(json.dumps(metrics, indent=1))
    log(json.dumps({"accuracy": acc["accuracy"], "per_type": acc["per_type"],
                    "mask_ratio_per_layer": [round(r, 2) for r in attn["ratio"]]}))
    return metrics
