"""VisionZip (Yang et al. 2024): dominant tokens by [CLS] attention, plus contextual tokens that
merge the rest by key similarity. Runs before the LLM, on each crop (an image; on LLaVA-NeXT the
base image and every tile) with its own budget, as the authors' code does.

For a crop's budget k = k_d + k_c (default k_c = round(k * 10 / 64): 54 + 10 of 64, 108 + 20 of
128, 162 + 30 of 192, the authors' settings), following dvlab-research/VisionZip (`visionzip`):
  1. dominant: the vision [CLS] token itself and the k_d - 1 patches with the largest [CLS]
     attention (the authors rank by the head-sum; the head-mean ranks alike);
  2. of the remaining patches R (ascending), k_c evenly spaced targets R[0], R[s], R[2s], ... with
     s = max(1, |R| // k_c);
  3. every other patch of R joins the target whose (head-mean, L2-normalised) key is most similar;
  4. a contextual token is its target's feature plus the mean of the features that joined it
     (not the group mean), merged before the projector;
  5. the order the LLM sees is [CLS, dominant patches in position order, contextual tokens in
     target order], positions renumbered.
LLaVA's 'default' feature strategy drops [CLS] before the projector, so the layout has no column
for it: [CLS] rides in the sequence slot of one patch that is merged away (the first non-target
of R). `ProjectorMerge` writes the projected [CLS] there and reports that column as a stand-in,
not as a kept patch.

Fidelity: run against the authors' released code on shared inputs (issue 41), the dominant and
contextual tokens equal theirs on every case tried and the merged features agree to 5e-7
(dvlab-research/VisionZip, `visionzip/clip_encoder.py`, `CLIPVisionTower_VisionZip.forward`,
installed by `visionzip/main.py`, `visionzip`). Differences: the head-mean [CLS] attention
ranks instead of their head sum (a constant factor); [CLS] travels in a merged patch's slot
(above) because LLaVA's 'default' strategy has no column for it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..._core.devices import to_device
from ..._core.scoped import scoped
from ..indices import true_indices
from ..vision import projector_rows
from ..plans import pre_stage
from ..registry import Method, Need, register

CONTEXTUAL_SHARE = 10 / 64


def split(keep: int, contextual: int | None = None) -> tuple[int, int]:
    """(dominant, contextual) token counts for a budget of `keep` tokens; dominant counts [CLS]."""
    c = round(keep * CONTEXTUAL_SHARE) if contextual is None else contextual
    c = min(max(c, 0), keep - 1) if keep > 1 else 0
    return keep - c, c


@dataclass
class Selection:
    """One crop's VisionZip choice, as indices into the crop's n patches (on the inputs' device).

    order: [keep] the sequence the LLM sees: [slot, dominant ascending, targets]; all n when keep >= n.
    targets: [k_c] patches whose slot carries a contextual (merged) token.
    owner: [n] the target each merged patch joined, -1 for the rest (dominant, targets, dropped).
    slot: 0-dim index of the patch whose slot carries [CLS], or None when the crop is kept whole.
    """

    order: torch.Tensor
    targets: torch.Tensor
    owner: torch.Tensor
    slot: torch.Tensor | None


def select(saliency: torch.Tensor, keys: torch.Tensor, keep: int, *, contextual: int | None = None) -> Selection:
    """Choose one crop's dominant and contextual tokens (steps 1-3, 5 of the module docstring).

    Args:
        saliency: [n] [CLS] attention per patch.
        keys: [n, d] head-mean keys of the same layer, the similarity metric.
        keep: budget, 1 <= keep; keep >= n keeps the crop whole (no [CLS], nothing merged).
        contextual: contextual token count (default round(keep * 10 / 64)).
    """
    n, device = saliency.numel(), saliency.device
    owner = torch.full((n,), -1, dtype=torch.long, device=device)
    if keep >= n:
        return Selection(torch.arange(n, device=device), owner[:0], owner, None)
    n_dom, n_ctx = split(keep, contextual)
    n_patch_dom = n_dom - 1  # [CLS] is one of the dominant tokens
    dominant = torch.topk(saliency.float(), n_patch_dom).indices.sort().values
    is_rest = torch.ones(n, dtype=torch.bool, device=device)
    is_rest[dominant] = False
    n_rest = n - n_patch_dom  # >= n_ctx + 2 since keep < n
    rest = true_indices(is_rest, n_rest)
    if n_ctx == 0:
        return Selection(torch.cat([rest[:1], dominant]), owner[:0], owner, rest[0])
    step = max(1, n_rest // n_ctx)
    targets = rest[torch.arange(0, n_rest, step, device=device)[:n_ctx]]
    slot = rest[1 if step > 1 else n_ctx]  # a patch that is merged away, never a target
    is_rest[targets] = False
    others = true_indices(is_rest, n_rest - n_ctx)
    sim = F.normalize(keys[others].float(), dim=-1) @ F.normalize(keys[targets].float(), dim=-1).T
    owner[others] = targets[sim.argmax(dim=1)]
    return Selection(torch.cat([slot[None], dominant, targets]), targets, owner, slot)


def merge(features: torch.Tensor, owner: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Step 4: features [n, D] -> [len(targets), D], target + mean of the patches that joined it."""
    device = features.device
    slot = torch.full((features.shape[0] + 1,), len(targets), dtype=torch.long, device=device)
    slot[targets] = torch.arange(len(targets), device=device)
    group = slot[owner]  # owner -1 reads the last entry: the spare row len(targets)
    sums = torch.zeros(len(targets) + 1, features.shape[1], dtype=torch.float32, device=device)
    sums.index_add_(0, group, features.float())
    counts = torch.zeros(len(targets) + 1, device=device).index_add_(0, group, torch.ones_like(group, dtype=torch.float32))
    mean = sums[:-1] / counts[:-1, None].clamp_min(1)
    return (features[targets].float() + mean).to(features.dtype)


def choose(inputs) -> torch.Tensor:
    """The pre-LLM stage's sequence of image tokens: each crop's `select` order, crops in turn,
    then the LLaVA-NeXT newline tokens (kept on top of the budget). Indices into the image tokens.
    When no crop is reduced the tokens keep their sequence order: the unpruned input."""
    newlines = inputs.newline_index if inputs.newline_index is not None else inputs.newline.nonzero().flatten()
    if all(k >= len(crop) for crop, k in zip(inputs.crops, inputs.crop_keep)):
        every = torch.cat([newlines, *inputs.crops])
        return every[torch.argsort(inputs.positions[every])]
    parts = [crop[select(inputs.saliency[crop], inputs.vision_keys[crop], k).order]
             for crop, k in zip(inputs.crops, inputs.crop_keep) if k > 0]
    return torch.cat([*parts, newlines])


class ProjectorMerge:
    """While active, the projector outputs behind each crop's contextual targets become the projected
    merged features (step 4), and the [CLS] slot's the projected [CLS] feature.

    Args:
        vlm, batch: the run's model and inputs.
        stage: the pre-LLM `Stage` (its `per_crop` budgets).
        crops: per sample, per crop, the patch columns (`vision.crop_columns`, on the CPU).
        capture: the run's `vision.VisionCapture` (saliency, keys and [CLS] features).
        contextual: contextual token count per crop (default: `split`).
    Attributes (after the forward pass):
        stand_ins: per sample, the columns whose slot carried [CLS] (not kept patches).
    """

    def __init__(self, vlm, batch, stage, crops, capture, contextual: int | None = None):
        self.vlm, self.batch, self.stage, self.capture = vlm, batch, stage, capture
        self.crops_cpu = crops
        self.crops = [[c.to(vlm.device) for c in sample] for sample in crops]
        self.contextual = contextual
        self.stand_ins = [[] for _ in batch.layouts]

    def __enter__(self):
        self._ctx = scoped(self.vlm.model.model.multi_modal_projector, "post", self._merge)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)

    def _merge(self, module, args, output):
        feats = args[0]  # [V, N, Dv]
        n_inputs, n_patches = feats.shape[:2]
        device = output.device
        rows = projector_rows(self.vlm, self.batch, n_patches, n_inputs)  # layout info, built on the host
        flat_in = feats.reshape(n_inputs * n_patches, -1)
        flat_out = output.reshape(n_inputs * n_patches, -1).clone()
        cls = self.capture.cls_features  # [V, Dv]
        for b, (sal, keys) in enumerate(to_device(self.capture.columns(self.batch), device)):
            r = rows[b].to(device)
            self.stand_ins[b] = []
            first_rows = [int(rows[b][c[0]]) for c in self.crops_cpu[b]]  # CPU layout tensors: no device read
            for crop, k, row0 in zip(to_device(self.crops[b], device), self.stage.per_crop[b], first_rows):
                if k >= len(crop):
                    continue
                choice = select(sal[crop], keys[crop], k, contextual=self.contextual)
                crop_rows = r[crop]
                if len(choice.targets):
                    merged = merge(flat_in[crop_rows], choice.owner, choice.targets)
                    flat_out[crop_rows[choice.targets]] = module.forward(merged).to(flat_out.dtype)  # no hook recursion
                slot = choice.slot[None]  # a 1-element index: a 0-dim one would read it back to the host
                flat_out[crop_rows[slot]] = module.forward(cls[row0 // n_patches][None]).to(flat_out.dtype)
                self.stand_ins[b].append(crop[slot].to(self.vlm.device))  # beside the kept columns
        return flat_out.view_as(output)


def choose_visionzip(inputs, keep, stage):
    return choose(inputs)


def prepare_visionzip(vlm, batch, stage, capture, crops):
    return ProjectorMerge(vlm, batch, stage, crops, capture)


register(Method(name="visionzip", summary="VisionZip: [CLS] + dominant [CLS]-attention tokens + contextual tokens merged "
                "by key similarity", where="pre", needs=(Need.CLS, Need.CLS_TOKEN), choose=choose_visionzip,
                plan=pre_stage(), positions="renumber", prepare=prepare_visionzip, ordered=True))
