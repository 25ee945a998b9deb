"""Synthetic scenes of coloured shapes with ground-truth masks, and template questions about them.

Deterministic by seed: `scene(seed)` always draws the same image, objects and masks, and
`questions(scene, seed)` the same questions. Objects never overlap (occlusion-free), so each
object's mask is exactly its drawn pixels. Question types (answers are single words):

    color     what color is the {shape} ?            (the shape is unique in the scene)
    shape     what shape is the {color} object ?     (the colour is unique)
    exist     is there a {color} {shape} ?           yes / no
    count     how many {shapes} are there ?          one .. four
    position  is the {color} {shape} left of the {color} {shape} ?   yes / no (clearly apart)
    small     what color is the small object ?       (exactly one small, non-salient object)

`targets` of a question are the objects whose pixels answer it (empty for a 'no' existence
question); their union mask is what attention-in-mask analyses score against.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .dataset import Sample, write_samples

SIZE = 96
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230), "yellow": (235, 215, 40),
          "purple": (150, 60, 200), "orange": (245, 140, 30), "white": (240, 240, 240), "cyan": (40, 210, 220)}
SHAPES = ("circle", "square", "triangle", "cross")
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")
TYPES = ("color", "shape", "exist", "count", "position", "small")
RADIUS = {"large": (13, 18), "medium": (9, 12), "small": (5, 6)}
WORDS = (list(COLORS) + list(SHAPES) + list(PLURAL.values()) + list(NUMBERS) + list(RADIUS) +
         "what color is the shape object is there a how many are left of right small yes no top bottom middle "
         "and . ? user assistant :".split())


@dataclass
class Obj:
    shape: str
    color: str
    size: str
    center: tuple[float, float]  # (x, y) pixels
    radius: float
    mask: np.ndarray = field(repr=False, default=None)  # [H, W] bool

    @property
    def box(self) -> list[int]:
        ys, xs = np.nonzero(self.mask)
        return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


@dataclass
class Scene:
    seed: int
    image: np.ndarray  # [H, W, 3] uint8
    objects: list[Obj]


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r * 0.95, cy + r * 0.8), (cx + r * 0.95, cy + r * 0.8)], fill=fill)
    elif shape == "cross":
        t = r * 0.35
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)
    else:
        raise ValueError(shape)


def _background(rng: np.random.Generator) -> np.ndarray:
    base = rng.integers(30, 90)
    img = np.full((SIZE, SIZE, 3), base, dtype=np.float32)
    kind = rng.integers(3)
    if kind == 1:  # pixel noise
        img += rng.normal(0, 8, img.shape)
    elif kind == 2:  # soft stripes
        period = rng.integers(6, 16)
        img += 10 * np.sin(np.arange(SIZE) * 2 * math.pi / period)[None, :, None]
    return np.clip(img, 0, 255)


def scene(seed: int, n_objects: tuple[int, int] = (2, 6), small: bool | None = None) -> Scene:
    """Draw scene `seed`: 2-6 non-overlapping objects; at most one small object (always one if `small`)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(n_objects[0], n_objects[1] + 1))
    want_small = bool(rng.integers(2)) if small is None else small
    sizes = ["small"] if want_small else []
    sizes += [str(rng.choice(["large", "medium"])) for _ in range(n - len(sizes))]
    placed: list[Obj] = []
    for size in sizes:
        for _ in range(200):
            r = float(rng.uniform(*RADIUS[size]))
            cx, cy = rng.uniform(r + 2, SIZE - r - 2, size=2)
            if all(math.hypot(cx - o.center[0], cy - o.center[1]) > r + o.radius + 3 for o in placed):
                placed.append(Obj(str(rng.choice(SHAPES)), str(rng.choice(list(COLORS))), size, (float(cx), float(cy)), r))
                break
    canvas = Image.fromarray(_background(rng).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for o in placed:
        layer = Image.new("L", (SIZE, SIZE), 0)
        _draw(ImageDraw.Draw(layer), o.shape, *o.center, o.radius, 255)
        o.mask = np.asarray(layer) > 127  # the same rasterisation as the drawn pixels
        _draw(draw, o.shape, *o.center, o.radius, COLORS[o.color])
    return Scene(seed, np.asarray(canvas).copy(), placed)


@dataclass
class Question:
    question: str
    answer: str
    type: str
    targets: list[int]


def _name(o: Obj) -> str:
    return f"{o.color} {o.shape}"


def ask(sc: Scene, qtype: str, rng: np.random.Generator) -> Question | None:
    """One question of `qtype` about scene `sc`, or None when the scene cannot support it."""
    objs = sc.objects
    big = [i for i, o in enumerate(objs) if o.size != "small"]
    if qtype in ("color", "shape"):
        named_by = "shape" if qtype == "color" else "color"  # the attribute that names the object
        unique = [i for i in big if sum(getattr(o, named_by) == getattr(objs[i], named_by) for o in objs) == 1]
        if not unique:
            return None
        i = int(rng.choice(unique))
        o = objs[i]
        text = f"what color is the {o.shape} ?" if qtype == "color" else f"what shape is the {o.color} object ?"
        return Question(text, getattr(o, qtype), qtype, [i])
    if qtype == "exist":
        if rng.integers(2):
            i = int(rng.choice(big)) if big else None
            if i is None:
                return None
            return Question(f"is there a {_name(objs[i])} ?", "yes", qtype,
                            [j for j, o in enumerate(objs) if _name(o) == _name(objs[i])])
        present = {_name(o) for o in objs}
        # a near miss: a present colour or a present shape, in a combination that is absent
        o = objs[int(rng.integers(len(objs)))]
        options = [f"{o.color} {s}" for s in SHAPES] + [f"{c} {o.shape}" for c in COLORS]
        options = [x for x in options if x not in present]
        return Question(f"is there a {options[int(rng.integers(len(options)))]} ?", "no", qtype, [])
    if qtype == "count":
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        idx = [i for i, o in enumerate(objs) if o.shape == shape]
        if not 1 <= len(idx) <= 4:
            return None
        return Question(f"how many {PLURAL[shape]} are there ?", NUMBERS[len(idx)], qtype, idx)
    if qtype == "position":
        unique = [i for i in big if sum(_name(o) == _name(objs[i]) for o in objs) == 1]
        pairs = [(a, b) for a in unique for b in unique if a != b and abs(objs[a].center[0] - objs[b].center[0]) > 16]
        if not pairs:
            return None
        a, b = pairs[int(rng.integers(len(pairs)))]
        answer = "yes" if objs[a].center[0] < objs[b].center[0] else "no"
        return Question(f"is the {_name(objs[a])} left of the {_name(objs[b])} ?", answer, qtype, [a, b])
    if qtype == "small":
        idx = [i for i, o in enumerate(objs) if o.size == "small"]
        if len(idx) != 1:
            return None
        return Question("what color is the small object ?", objs[idx[0]].color, qtype, idx)
    raise ValueError(f"unknown question type {qtype!r}; types: {TYPES}")


def questions(sc: Scene, seed: int, types=TYPES) -> list[Question]:
    """Every type the scene supports, one question each (deterministic by `seed`)."""
    rng = np.random.default_rng(seed)
    out = [ask(sc, t, rng) for t in types]
    return [q for q in out if q is not None]


def caption(sc: Scene) -> str:
    """Dense caption naming every object's size, colour, shape and position, left to right."""
    def where(o):
        x, y = o.center
        return ("top" if y < SIZE / 3 else "bottom" if y > 2 * SIZE / 3 else "middle") + " " + \
               ("left" if x < SIZE / 3 else "right" if x > 2 * SIZE / 3 else "middle")
    objs = sorted(sc.objects, key=lambda o: o.center[0])
    return " and ".join(f"{o.size} {o.color} {o.shape} {where(o)}" for o in objs) + " ."


# -- masks as run-length encoding -------------------------------------------------------------------
def mask_to_rle(mask: np.ndarray) -> dict:
    """Row-major RLE: {"size": [h, w], "counts": [zeros, ones, zeros, ...]} (first run is zeros)."""
    flat = np.asarray(mask, dtype=bool).ravel()
    change = np.flatnonzero(np.diff(np.concatenate([[False], flat]).astype(np.int8)))  # where a new run starts
    runs = np.diff(np.concatenate([[0], change, [flat.size]]))
    return {"size": list(mask.shape), "counts": [int(x) for x in runs]}


def rle_to_mask(rle: dict) -> np.ndarray:
    h, w = rle["size"]
    flat = np.zeros(h * w, dtype=bool)
    pos, value = 0, False
    for run in rle["counts"]:
        flat[pos:pos + run] = value
        pos += run
        value = not value
    return flat.reshape(h, w)


def target_mask(sample: Sample) -> np.ndarray:
    """Union mask [H, W] of a sample's target objects (all False when it has none)."""
    objs = sample.extra["objects"]
    h, w = objs[0]["mask"]["size"]
    mask = np.zeros((h, w), dtype=bool)
    for i in sample.extra.get("targets", []):
        mask |= rle_to_mask(objs[i]["mask"])
    return mask


def write_dataset(folder: str | Path, n_images: int, *, seed: int = 0, types=TYPES, progress: bool = True) -> Path:
    """Write scenes `seed .. seed + n_images - 1` and their questions in the standard format.

    Each line: id, image, question, answer, type, targets (object indices) and objects (shape,
    colour, size, box [x0, y0, x1, y1], mask as RLE).
    """
    from tqdm.auto import tqdm

    root = Path(folder)
    (root / "images").mkdir(parents=True, exist_ok=True)
    samples = []
    for s in tqdm(range(seed, seed + n_images), desc="scenes", disable=not progress):
        sc = scene(s)
        path = root / "images" / f"{s:07d}.png"
        Image.fromarray(sc.image).save(path)
        objects = [{"shape": o.shape, "color": o.color, "size": o.size, "box": o.box, "mask": mask_to_rle(o.mask)}
                   for o in sc.objects]
        for q in questions(sc, s, types):
            samples.append(Sample(f"{s:07d}-{q.type}", path, q.question, q.answer, q.type,
                                  {"targets": q.targets, "objects": objects}))
    (root / "scenes.json").write_text(json.dumps({"generator": "vtanalysis.data.shapes", "seed": seed,
                                                  "n_images": n_images, "types": list(types)}))
    return write_samples(root, samples)
