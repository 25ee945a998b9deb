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

import torch

from ..._core.devices import to_device
from ..._core.scoped import scoped
from ...rules.visionzip import CONTEXTUAL_SHARE, Selection, merge, select, split  # noqa: F401 (the method's rule)
from ..vision import projector_rows
from ..plans import pre_stage
from ..registry import Method, Need, register

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
