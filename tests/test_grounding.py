"""SAM-2 + open_clip grounding on randomly initialised models (issue 5): the pipeline runs end to
end and yields masks of the image's size; the open_clip choice picks the crop matching the text."""
import json

import numpy as np
import pytest

sam2 = pytest.importorskip("sam2")
open_clip = pytest.importorskip("open_clip")

from vtanalysis.analysis.grounding import Grounder  # noqa: E402

TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                                             "head_width": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def grounder(tmp_path_factory):
    import torch
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip") / "vta-tiny-clip.json"
    path.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(path)
    clip, _, preprocess = open_clip.create_model_and_transforms("vta-tiny-clip", pretrained=None)
    sam = SAM2ImagePredictor(build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu"))
    return Grounder(sam, clip, preprocess, open_clip.get_tokenizer("vta-tiny-clip"), points_per_side=2, min_score=-10)


def test_grounding_pipeline_runs_on_random_models(grounder):
    image = (np.random.default_rng(0).random((64, 80, 3)) * 255).astype(np.uint8)
    masks, scores = grounder.proposals(image)
    assert masks.shape == (4, 64, 80) and masks.dtype == bool and scores.shape == (4,)
    mask = grounder.mask(image, "what color is the circle ?")
    assert mask.shape == (64, 80) and mask.dtype == bool


def test_choice_follows_clip_similarity(grounder):
    """With two candidate masks, the chosen one has the larger crop-text cosine."""
    image = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
    masks = np.zeros((2, 64, 64), bool)
    masks[0, :20, :20] = True
    masks[1, 30:, 30:] = True
    best, sims = grounder.choose(image, masks, "a red square")
    import torch
    from PIL import Image

    crops = torch.stack([grounder.preprocess(Image.fromarray(image[:20, :20])),
                         grounder.preprocess(Image.fromarray(image[30:, 30:]))])
    with torch.no_grad():
        img = torch.nn.functional.normalize(grounder.clip.encode_image(crops), dim=-1)
        txt = torch.nn.functional.normalize(grounder.clip.encode_text(grounder.tokenizer(["a red square"])), dim=-1)
    np.testing.assert_allclose(sims, (img @ txt.T)[:, 0].numpy(), atol=1e-5)
    assert best == int(np.argmax(sims))


def test_hf_clip_chooses_among_given_masks_without_sam(images):
    """Issue 14: `Grounder` over a transformers CLIP (`HFClip`) with the candidate masks given: the
    chosen mask is the candidate whose crop has the highest cosine to the text, as `choose` scores."""
    import numpy as np
    import pytest

    from reference import tiny_clip
    from vtanalysis.analysis.grounding import Grounder
    from vtanalysis.errors import VTAError
    from vtanalysis.models import tiny
    from vtanalysis.models.images import load_image

    clip = tiny_clip(tiny.build("llava", seed=1, num_layers=2), context=16)
    grounder = Grounder(None, clip, clip.preprocess, clip.tokenizer)
    image = np.asarray(load_image(images[0]))
    h, w = image.shape[:2]
    masks = np.zeros((3, h, w), dtype=bool)
    masks[0, : h // 2, : w // 2], masks[1, h // 2:, w // 2:], masks[2, : h // 3, w // 2:] = True, True, True
    best, sims = grounder.choose(image, masks, "what color is the circle ?")
    assert sims.shape == (3,) and best == int(np.argmax(sims))
    assert np.array_equal(grounder.mask(image, "what color is the circle ?", proposals=masks), masks[best])
    with pytest.raises(VTAError, match="proposals="):
        grounder.mask(image, "what color is the circle ?")
