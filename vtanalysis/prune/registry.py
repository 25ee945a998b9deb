"""The registry of pruning methods: `Method` (what a method needs, where it acts, how it plans and
chooses), `Need` (the inputs a chooser may ask for) and `register` / `get` / `methods`.

A method lives in one file under `prune/methods/` that ends by calling `register(Method(...))`;
the package imports every file in that folder, so adding a method is adding a file (or a plugin
module, see `prune.plugins`).
"""
from __future__ import annotations

import enum
import inspect
from dataclasses import dataclass
from typing import Callable

from ..errors import MethodError, VTAError
from . import plugins

WHERE = {"llm": "inside the decoder, from layer K >= 1",
         "pre": "before the LLM: one stage at layer 0, choosing from the input embeddings and the vision tower",
         "image": "on the image, before the processor (the batch is prepared from the changed image)"}
POSITIONS = ("original", "renumber")


class Need(str, enum.Enum):
    """What a chooser reads besides the image tokens' columns and grids; each fills fields of
    `engine.StageInputs` (the engine computes only what some method needs).

    - LAST_ROW: `last_row` [n], layer K-1's head-mean attention of the last prompt token (FastV).
    - TEXT_ROWS: `text_to_text` [H, T, T] and `text_to_image` [H, T, n], layer K-1 (AdaptInfer, SparseVLM).
    - IMAGE_ROWS: `image_to_image` [H, n, n] too (FitPrune).
    - OWN_ROWS: `last_row` from layer K's own q/k on the states entering it (PyramidDrop).
    - KEYS: `keys` [n, D], k_proj of layer K on the states entering it, no norm, no RoPE (AdaptPrune).
    - CLS: `saliency` [n] and `vision_keys` [n, d], the vision tower's [CLS] attention (or the
      attention each patch receives, where the family has no [CLS]).
    - CLS_TOKEN: no field; the [CLS] token itself or its CLIP must exist (never substituted).
    - EMBEDS: `text_embeds` [T, D] and `image_embeds` [N, D], the LLM's input embeddings.
    - VISION_FEATURES: `vision_features` [n, Dv], the projector's input at the feature layer.
    - PREV_KEYS: `prev_keys` [n + T, H d], layer K-1's keys after RoPE (DART's pivots).
    - NORMED_HIDDEN: `normed_hidden` [n + T, D], the states entering layer K through the final norm.
    """
    LAST_ROW = "last_row"
    TEXT_ROWS = "text_rows"
    IMAGE_ROWS = "image_rows"
    OWN_ROWS = "own_rows"
    KEYS = "keys"
    CLS = "cls"
    CLS_TOKEN = "cls_token"
    EMBEDS = "embeds"
    VISION_FEATURES = "vision_features"
    PREV_KEYS = "prev_keys"
    NORMED_HIDDEN = "normed_hidden"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, kw_only=True)
class Method:
    """A pruning method: how many tokens it keeps at which layers (`plan`) and which (`choose`).

    Attributes:
        name: the registered name (`prune.run(vlm, batch, name)`).
        summary: one line for `vtanalysis methods` and the docs.
        where: "llm" (inside the decoder), "pre" (before the LLM, one stage at layer 0) or "image"
            (changes the image before the processor).
        needs: `Need`s (or their string values) the chooser reads; the engine computes only these.
        choose: choose(inputs: StageInputs, keep: int, stage: int, **choose_knobs) -> LongTensor
            [keep] of distinct indices into the stage's current image tokens, on the model's device.
        plan: plan(vlm, n_image: int, keep: float | int, **knobs) -> [(first layer seeing the kept
            set, tokens kept)], one pair per stage ([] for no pruning).
        positions: the default position-id convention of the kept tokens, "original" or "renumber".
        prepare: optional prepare(vlm, batch, first_stage, vision_capture, crops) -> a context
            manager active during the run (VisionZip's merge, `pool`'s block means).
        choose_knobs: keyword options `prune.run` passes to `choose` instead of `plan` (seed, ...).
        ordered: pre-LLM only: the chooser's order (repeats included) is the image part of the sequence.
        resolve_knobs: resolve_knobs(vlm, choose_knobs) -> choose_knobs, defaults that depend on
            the model (CDPruner's CLIP).
    """
    name: str
    summary: str
    where: str
    needs: tuple[Need, ...]
    choose: Callable
    plan: Callable
    positions: str = "original"
    prepare: Callable | None = None
    choose_knobs: tuple[str, ...] = ()
    ordered: bool = False
    resolve_knobs: Callable | None = None

    @property
    def plan_knobs(self) -> list[str]:
        params = list(inspect.signature(self.plan).parameters.values())[3:]  # after vlm, n_image, keep
        return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    @property
    def knobs(self) -> list[str]:
        """The keyword options `prune.run(..., **knobs)` accepts for this method (e.g. layer, seed)."""
        return self.plan_knobs + list(self.choose_knobs)

    def split_knobs(self, knobs: dict) -> tuple[dict, dict]:
        """(plan knobs, choose knobs); an option the method does not have is an error naming the ones it has."""
        takes_any = any(p.kind == p.VAR_KEYWORD and p.name != "_" for p in inspect.signature(self.plan).parameters.values())
        unknown = [k for k in knobs if k not in self.knobs]
        if unknown and not takes_any:
            raise VTAError(f"method '{self.name}' has no option {', '.join(map(repr, unknown))}; its options: "
                           f"{', '.join(self.knobs) or 'none'}.")
        choose = {k: v for k, v in knobs.items() if k in self.choose_knobs}
        return {k: v for k, v in knobs.items() if k not in choose}, choose


_REGISTRY: dict[str, Method] = {}


def _takes(fn: Callable, count: int) -> bool:
    """`fn` accepts `count` positional arguments."""
    try:
        inspect.signature(fn).bind(*range(count))
    except TypeError:
        return False
    return True


def _validated(method: Method) -> Method:
    """`method` with its needs as `Need`s; a wrong field is a `MethodError` naming the method and the fix."""
    name = getattr(method, "name", None)
    if not isinstance(name, str) or not name.strip():
        raise MethodError(f"a method's name must be a non-empty string, got {name!r}.")

    def bad(what: str) -> MethodError:
        return MethodError(f"method '{name}': {what}")

    if method.where not in WHERE:
        raise bad(f"where={method.where!r}; use one of {', '.join(map(repr, WHERE))}.")
    if method.positions not in POSITIONS:
        raise bad(f"positions={method.positions!r}; use 'original' or 'renumber'.")
    needs = (method.needs,) if isinstance(method.needs, str) else tuple(method.needs)
    unknown = [n for n in needs if n not in {m.value for m in Need}]
    if unknown:
        raise bad(f"unknown needs {', '.join(map(repr, unknown))}; known: {', '.join(m.value for m in Need)}.")
    if not callable(method.plan) or not _takes(method.plan, 3):
        raise bad("plan must be callable as plan(vlm, n_image, keep, **knobs).")
    if not callable(method.choose) or not _takes(method.choose, 3):
        raise bad("choose must be callable as choose(inputs, keep, stage, **choose_knobs).")
    params = inspect.signature(method.choose).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    missing = [k for k in method.choose_knobs if k not in params and not takes_any]
    if missing:
        raise bad(f"choose takes no keyword {', '.join(map(repr, missing))} named in choose_knobs.")
    if method.ordered and method.where != "pre":
        raise bad("ordered=True is for pre-LLM methods (where='pre').")
    for field in ("prepare", "resolve_knobs"):
        if getattr(method, field) is not None and not callable(getattr(method, field)):
            raise bad(f"{field} must be callable or None.")
    return Method(**{**method.__dict__, "needs": tuple(Need(n) for n in needs)})


def register(method: Method, *, replace: bool = False) -> Method:
    """Add `method` to the registry, so `prune.run`, `prune.select`, `vtanalysis eval` and the figures
    accept its name. Its fields are checked here (`MethodError` naming the method); a name already
    registered by another method is refused unless `replace=True`. Returns the registered `Method`."""
    if not isinstance(method, Method):
        raise MethodError(f"register takes a prune.Method, not {type(method).__name__}.")
    method = _validated(method)
    old = _REGISTRY.get(method.name)
    if old is not None and not replace and old != method:
        raise MethodError(f"a method named '{method.name}' is already registered ({old.summary!r}); pick another "
                          f"name, or pass replace=True to replace it.")
    _REGISTRY[method.name] = method
    return method


def get(name: str) -> Method:
    """The method called `name`; unknown names get an error listing all registered ones."""
    if name not in _REGISTRY:
        plugins.load()
    if name not in _REGISTRY:
        raise VTAError(f"unknown pruning method '{name}'. Registered methods: {', '.join(methods())}.")
    return _REGISTRY[name]


def methods() -> list[str]:
    """Every registered method's name (plugins included, see `prune.plugins`)."""
    plugins.load()
    return sorted(_REGISTRY)
