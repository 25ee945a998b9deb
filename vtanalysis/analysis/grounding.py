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


class HFClip:
    """open_clip's interface (`encode_image`, `encode_text`, a preprocess and a tokenizer) over a
    transformers `CLIPModel` and its processor; `text_suffix` is appended to every text (the demo's
    word tokenizer adds no end token, and its text encoder pools at "</s>")."""

    def __init__(self, model, processor, text_suffix: str = ""):
        self.model, self.processor, self.text_suffix = model, processor, text_suffix

    def eval(self) -> "HFClip":
        self.model.eval()
        return self

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.processor.image_processor(image, return_tensors="pt")["pixel_values"][0]

    def tokenizer(self, texts: list[str]):
        return self.processor.tokenizer([t + self.text_suffix for t in texts], padding=True, return_tensors="pt")

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values=pixels.to(self.model.device)).pooler_output

    def encode_text(self, enc) -> torch.Tensor:
        return self.model.get_text_features(input_ids=enc["input_ids"].to(self.model.device),
                                            attention_mask=enc["attention_mask"].to(self.model.device)).pooler_output


class Grounder:
    """Question-grounded object masks from a SAM-2 image predictor and a CLIP.

    Args:
        sam: a `sam2.sam2_image_predictor.SAM2ImagePredictor`, or None when the candidate masks are
            always given (`mask(..., proposals=)`).
        clip: an open_clip model with `encode_image` / `encode_text` (or an `HFClip`); `preprocess`
            its image transform and `tokenizer` its tokenizer.
    """

    def __init__(self, sam, clip, preprocess, tokenizer, *, points_per_side: int = 4, min_score: float = 0.5):
        self.sam, self.clip, self.preprocess, self.tokenizer = sam, clip.eval(), preprocess, tokenizer
        self.points_per_side, self.min_score = points_per_side, min_score

    @classmethod
    def from_demo(cls, **kw) -> "Grounder":
        """The demo model's own contrastive CLIP (`models/demo/weights/clip`), offline; no SAM-2, so the
        candidate masks are passed to `mask(..., proposals=)` (e.g. a scene's object masks)."""
        from ..models import demo

        clip = HFClip(*demo.clip(), text_suffix=" </s>")
        return cls(None, clip, clip.preprocess, clip.tokenizer, **kw)

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

    def mask(self, image, text: str, proposals: np.ndarray | None = None) -> np.ndarray:
        """[H, W] bool mask of the object `text` asks about; all False when SAM-2 finds nothing.

        `proposals` [P, H, W] bool: choose among these masks instead of SAM-2's (all count as sure).
        """
        image = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
        if proposals is not None:
            proposals = np.asarray(proposals, dtype=bool)
            proposals = proposals[proposals.any(axis=(1, 2))]
            if not len(proposals):
                return np.zeros(image.shape[:2], dtype=bool)
            return proposals[self.choose(image, proposals, text)[0]]
        if self.sam is None:
            raise VTAError("this Grounder has no SAM-2 predictor (Grounder.from_demo): pass the candidate masks "
                           "as proposals=, or use Grounder.from_pretrained().")
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
