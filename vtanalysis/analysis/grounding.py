"""Object masks for questions on data without ground truth: SAM-2 proposes, open_clip chooses
(AdaFV appendix A; needs `pip install "vtanalysis[saliency]"`).

SAM-2 segments the object under each point of a `points_per_side` x `points_per_side` grid of
single-point prompts; proposals below `min_score` (SAM's own IoU estimate) are dropped, lowering
the threshold in 0.01 steps down to 0.2 until one survives (the paper's rule). Each surviving
mask's bounding-box crop is embedded by open_clip, and the mask whose crop is most similar to
the question, cos(E_img(crop), E_txt(question)), is the object mask.
Scored against token saliency by `analysis.saliency.score_against_masks`, like ground truth.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..errors import VTAError


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as err:
        raise VTAError(f"'{module}' is not installed; install the grounding extras: "
                       "pip install \"vtanalysis[saliency]\"") from err


class Grounder:
    """Question-grounded object masks from a SAM-2 image predictor and an open_clip model.

    Args:
        sam: a `sam2.sam2_image_predictor.SAM2ImagePredictor`.
        clip: an open_clip model with `encode_image` / `encode_text`; `preprocess` its image
            transform and `tokenizer` its tokenizer.
    """

    def __init__(self, sam, clip, preprocess, tokenizer, *, points_per_side: int = 4, min_score: float = 0.5):
        self.sam, self.clip, self.preprocess, self.tokenizer = sam, clip.eval(), preprocess, tokenizer
        self.points_per_side, self.min_score = points_per_side, min_score

    @classmethod
    def from_pretrained(cls, sam: str = "facebook/sam2.1-hiera-tiny", clip: str = "ViT-B-32",
                        clip_pretrained: str = "openai", device: str = "cpu", **kw) -> "Grounder":
        """Load released weights (from the hub, or open_clip's cache) - the path for real data."""
        _require("sam2")
        open_clip = _require("open_clip")
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        predictor = SAM2ImagePredictor.from_pretrained(sam, device=device)
        model, _, preprocess = open_clip.create_model_and_transforms(clip, pretrained=clip_pretrained, device=device)
        return cls(predictor, model, preprocess, open_clip.get_tokenizer(clip), **kw)

    def proposals(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """SAM-2 masks for a grid of point prompts: ([P, H, W] bool, [P] predicted IoU)."""
        h, w = image.shape[:2]
        n = self.points_per_side
        xs, ys = (np.arange(n) + 0.5) * w / n, (np.arange(n) + 0.5) * h / n
        points = np.array([[[x, y]] for y in ys for x in xs], dtype=np.float32)  # [P, 1, 2]
        self.sam.set_image(image)
        masks, scores, _ = self.sam.predict(point_coords=points, point_labels=np.ones((len(points), 1), dtype=np.int64),
                                            multimask_output=False)
        return masks.reshape(len(points), h, w) > 0, scores.reshape(len(points))

    @torch.no_grad()
    def choose(self, image: np.ndarray, masks: np.ndarray, text: str) -> tuple[int, np.ndarray]:
        """Index of the mask whose box crop best matches `text`, and every candidate's cosine [P]."""
        crops = []
        for m in masks:
            ys, xs = np.nonzero(m)
            crops.append(self.preprocess(Image.fromarray(image[ys.min():ys.max() + 1, xs.min():xs.max() + 1])))
        img = torch.nn.functional.normalize(self.clip.encode_image(torch.stack(crops)).float(), dim=-1)
        txt = torch.nn.functional.normalize(self.clip.encode_text(self.tokenizer([text])).float(), dim=-1)
        sims = (img @ txt.T)[:, 0]
        return int(sims.argmax()), sims.numpy()

    def mask(self, image, text: str) -> np.ndarray:
        """[H, W] bool mask of the object `text` asks about; all False when SAM-2 finds nothing."""
        image = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
        masks, scores = self.proposals(image)
        masks, scores = masks[masks.any(axis=(1, 2))], scores[masks.any(axis=(1, 2))]
        threshold = self.min_score
        while threshold >= 0.2 - 1e-9:
            keep = scores >= threshold
            if keep.any():
                best, _ = self.choose(image, masks[keep], text)
                return masks[keep][best]
            threshold -= 0.01
        return np.zeros(image.shape[:2], dtype=bool)
