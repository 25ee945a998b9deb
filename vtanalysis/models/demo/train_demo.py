"""Training recipe of the demo model (`vtanalysis train-demo`), reproducible from a seed.

Each training sample is one generated scene and a short conversation about it:
    USER: <image>\\n{q1} ASSISTANT: {a1} </s> USER: {q2} ASSISTANT: {a2} </s> ...
with the loss on answer tokens only. With probability `caption_p` (decaying from 0.6 to 0.2) the
first turn is the dense caption ("describe the image ." -> every object's size, colour, shape
and position, loss on every caption token, as in LLaVA's first stage); the other turns are up
to eight distinct questions (three draws of every type the scene supports), shuffled. A conversation amortises the 144 image
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

from ...data import shapes
from ..._core.files import atomic_write
from .. import demo

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


def conversation(seed: int, rng: random.Random, caption_p: float, turns: int = 8
                 ) -> tuple[shapes.Scene, list[tuple[str, str]]]:
    """Scene `seed` and up to `turns` distinct question-answer turns (three draws of every type the
    scene supports), opened by the dense caption with probability `caption_p`."""
    sc, draw = shapes.scene(seed), np.random.default_rng(seed)
    qa = {}
    for _ in range(3):
        for qtype in shapes.TYPES:
            q = shapes.ask(sc, qtype, draw)
            if q is not None:
                qa.setdefault(q.question, q.answer)
    qa = list(qa.items())
    rng.shuffle(qa)
    if rng.random() < caption_p:
        return sc, [(CAPTION_PROMPT, shapes.caption(sc))] + qa[:turns // 2]
    return sc, qa[:turns]


def batch(vlm, seeds: list[int], rng: random.Random, caption_p: float) -> dict:
    tok, n_img = vlm.processor.tokenizer, demo_image_tokens(vlm)
    images, rows, patches = [], [], []
    for s in seeds:
        sc, turns = conversation(s, rng, caption_p)
        images.append(sc.image)
        patches.append(patch_labels(sc, demo.PATCH))
        rows.append(encode(tok, n_img, turns))
    return collate(vlm, rows, images, patches)


def collate(vlm, rows: list[tuple[list[int], list[int]]], images, patches: list[torch.Tensor]) -> dict:
    """Right-padded ids, labels and mask of the `encode`d rows, the images' pixels, the patch labels."""
    tok = vlm.processor.tokenizer
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, (i, l) in enumerate(rows):
        ids[b, :len(i)], labels[b, :len(l)], mask[b, :len(i)] = torch.tensor(i), torch.tensor(l), 1
    pixels = vlm.processor.image_processor(images, return_tensors="pt")["pixel_values"]
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels, "labels": labels,
            "patch_labels": torch.stack(patches)}


# -- dense per-patch supervision of the image tokens ------------------------------------------------
ATTRIBUTES = {"shape": shapes.SHAPES, "color": tuple(shapes.COLORS), "size": tuple(shapes.RADIUS)}


def patch_labels(sc: shapes.Scene, patch: int) -> torch.Tensor:
    """[5, G*G] long per patch: shape, colour and size index + 1 of the object covering it (0 = background),
    then the patch's column and row.

    A patch belongs to the object that covers most of it, if that object covers at least 20% of
    it (a small object, ~11 px across, still labels the patches it sits on).
    """
    g = sc.image.shape[0] // patch
    labels, best = torch.zeros(5, g * g, dtype=torch.long), np.full(g * g, 0.2)
    for o in sc.objects:
        cover = o.mask.reshape(g, patch, g, patch).mean(axis=(1, 3)).ravel()
        take = torch.from_numpy(cover >= best)
        best = np.maximum(best, cover)
        for k, (attr, values) in enumerate(ATTRIBUTES.items()):
            labels[k, take] = values.index(getattr(o, attr)) + 1
    labels[3], labels[4] = torch.arange(g * g) % g, torch.arange(g * g) // g
    return labels


def position_head(vlm) -> torch.nn.Linear:
    """Column and row classifier on the image tokens (dropped after training)."""
    return torch.nn.Linear(vlm.config.text_config.hidden_size, 2 * grid_side(vlm))


def patch_loss(vlm, head: torch.nn.Linear, tokens: torch.Tensor, labels: torch.Tensor,
               relation: bool = False) -> torch.Tensor:
    """Mean of per-token losses on the image tokens; tokens [B, N, d], labels [B, 5, N].

    Attributes are read against the decoder's own word embeddings: the logit of "red" is the dot
    product of the image token with the embedding of "red" (background: a fixed logit 0). Image
    tokens thus carry the very vectors the question words bring, so the decoder can find the queried
    object by matching a question word against the image tokens, the lookup our tasks ask for.
    Column and row are classified by `head`. With `relation`, position is also a scalar along the
    embeddings of the position words: token . (E[right] - E[left]) regresses the column scaled to
    [-1, 1] (and top/bottom the row), so "is A left of B" compares two numbers.
    """
    embed, tok = vlm.model.get_input_embeddings().weight, vlm.processor.tokenizer
    losses = []
    for k, values in enumerate(ATTRIBUTES.values()):
        words = embed[tok.convert_tokens_to_ids(list(values))]  # [C, d]
        logits = F.pad(tokens @ words.T, (1, 0))  # [B, N, 1 + C], background first
        losses.append(F.cross_entropy(logits.flatten(0, 1), labels[:, k].flatten()))
    for k, logits in enumerate(head(tokens).split(grid_side(vlm), dim=-1)):
        losses.append(F.cross_entropy(logits.flatten(0, 1), labels[:, 3 + k].flatten()))
    if relation:
        g = grid_side(vlm)
        for k, (low, high) in enumerate((("left", "right"), ("top", "bottom"))):
            axis = embed[tok.convert_tokens_to_ids(high)] - embed[tok.convert_tokens_to_ids(low)]
            losses.append(F.mse_loss(tokens @ axis, labels[:, 3 + k].float() * (2 / (g - 1)) - 1))
    return sum(losses) / len(losses)


def image_tokens(vlm, pixel_values: torch.Tensor) -> torch.Tensor:
    """[B, N, d] the projected image tokens the decoder reads (vision `vision_feature_layer`, no [CLS])."""
    out = vlm.model.model.vision_tower(pixel_values, output_hidden_states=True)
    return vlm.model.model.multi_modal_projector(out.hidden_states[vlm.config.vision_feature_layer][:, 1:])


def grid_side(vlm) -> int:
    v = vlm.config.vision_config
    return v.image_size // v.patch_size


def demo_image_tokens(vlm) -> int:
    return grid_side(vlm) ** 2


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


def train(out: str | Path = "runs/demo-train", *, steps: int = 4000, vision_steps: int = 1000,
          batch_size: int = 32, lr: float = 2e-3, aux_weight: float = 0.5, seed: int = 0, eval_every: int = 500,
          save_every: int = 250, relation_from: int = 1000, threads: int | None = None, log=print) -> dict:
    """Train (or resume) the demo model; returns the quick-eval history, wall minutes and the model.

    Stage 0 (`vision_steps` steps of 2 x `batch_size` scenes): the vision tower and projector learn
    each image token's shape, colour, size, column and row (`patch_loss`), the dense signal a
    from-scratch ViT needs to tell shapes apart. Stage 1 (`steps` steps): the whole LLaVA on conversations (`loss_of`),
    plus `aux_weight` x the same patch loss on the projected image tokens. One AdamW and
    one cosine schedule span both stages; the patch head is dropped after training. From stage-1
    step `relation_from` on, the patch loss adds the scalar position targets (`relation=True`):
    the recipe that shipped added them at step 1000, when colour, shape and small-object questions
    were learned but left-of questions were still at chance.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    vlm = demo.untrained(seed)
    model, head = vlm.model, position_head(vlm)
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
    tokens: list[torch.Tensor] = []
    # the projector's output is what the auxiliary patch loss reads; quick_eval (eval mode) needs none
    model.model.multi_modal_projector.register_forward_hook(
        lambda m, args, out: tokens.append(out) if m.training else None)
    t0, total, running = time.perf_counter() - elapsed, vision_steps + steps, None
    for step in range(start, total):
        tokens.clear()  # the hook keeps only this step's image tokens
        rng = random.Random(seed * 7919 + step)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, lr, warmup=300)
        if step < vision_steps:
            first = TRAIN_SEED0 + step * 2 * batch_size
            scenes = [shapes.scene(s) for s in range(first, first + 2 * batch_size)]
            pixels = vlm.processor.image_processor([sc.image for sc in scenes], return_tensors="pt")["pixel_values"]
            labels = torch.stack([patch_labels(sc, demo.PATCH) for sc in scenes])
            loss = patch_loss(vlm, head, image_tokens(vlm, pixels), labels)
        else:
            k = step - vision_steps
            caption_p = 0.6 - 0.4 * min(1.0, k / (0.5 * steps))
            seeds = [TRAIN_SEED0 + vision_steps * 2 * batch_size + k * batch_size + i for i in range(batch_size)]
            b = batch(vlm, seeds, rng, caption_p)
            loss = loss_of(vlm, b) + aux_weight * patch_loss(vlm, head, tokens[0], b["patch_labels"],
                                                             relation=k >= relation_from)
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
            state = {"model": model.state_dict(), "head": head.state_dict(), "opt": opt.state_dict(), "step": done,
                     "history": history, "elapsed": time.perf_counter() - t0}
            atomic_write(ckpt, lambda tmp: torch.save(state, tmp))
    model.eval()
    return {"history": history, "minutes": (time.perf_counter() - t0) / 60, "vlm": vlm}


def report(vlm, folder: str | Path, n_samples: int = 500, log=print) -> dict:
    """Held-out accuracy (overall, per type) and attention-in-mask per layer, written to folder/metrics.json.

    Held-out scenes are seeds 0 .. (below `TRAIN_SEED0`), written in the standard dataset format.
    """
    import tempfile

    from ...analysis import attention_in_mask
    from ...data.dataset import read_samples
    from ...experiments.evaluate import evaluate

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
