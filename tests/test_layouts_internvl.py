"""InternVL layouts (issue 18): dynamic tiling + thumbnail, pixel shuffle, <img>...</img> wrapping;
checked against the real processor's tiles (an image whose pixels name their position), the model's
own `pixel_shuffle` (features that name their tile, row and column), and the family's documented
arithmetic (InternVL 2.5 / 3 reports, "dynamic high resolution": 448 x 448 tiles, 1 to 12 of them
in the arrangement closest to the image's aspect ratio, plus a thumbnail; pixel unshuffle turns a
tile's 32 x 32 = 1,024 patches into 256 tokens)."""
import numpy as np
import pytest
import torch
import transformers

from reference import assert_rows_equal_eager

import vtanalysis as vta
from vtanalysis.errors import UnsupportedModelError
from vtanalysis.models import tiny
from vtanalysis.models.vlm import VLM
from vtanalysis.models.wordtok import word_tokenizer


def position_image(h, w) -> np.ndarray:
    """Red grows with x, green with y (0..255): a tile's mean colour says where it was cut from."""
    x = np.broadcast_to(np.linspace(0, 255, w)[None, :], (h, w))
    y = np.broadcast_to(np.linspace(0, 255, h)[:, None], (h, w))
    return np.stack([x, y, np.zeros((h, w))], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def vlm():
    return tiny.build("internvl", seed=0)


def tile_centres(vlm, pixel_values) -> torch.Tensor:
    """[n_tiles, 2] (x, y) centre of each processed tile as a fraction of the image, from its mean colour."""
    ip = vlm.processor.image_processor
    mean, std = torch.tensor(ip.image_mean)[:2, None, None], torch.tensor(ip.image_std)[:2, None, None]
    rgb = pixel_values[:, :2] * std + mean  # back to 0..1
    return rgb.mean((-1, -2))


@pytest.mark.parametrize("size,canvas", [((40, 60), (2, 3)), ((90, 50), (2, 1)), ((64, 64), (2, 2)), ((30, 30), None)])
def test_tiles_and_thumbnail_follow_the_processor_and_pixel_shuffle(vlm, size, canvas):
    batch = vlm.prepare([position_image(*size)], ["what color is the circle ?"])
    lay, pixels = batch.layouts[0], batch.model_inputs["pixel_values"]
    side = vlm.adapter.side(vlm.config)
    if canvas is None:  # one tile, no thumbnail
        assert [g.name for g in lay.grids] == ["image"] and pixels.shape[0] == 1 and lay.n_image_tokens == side ** 2
        return
    rows, cols = canvas
    tiles, thumb = lay.grids
    assert tiles.shape == (rows * side, cols * side) and thumb.shape == (side, side)
    assert pixels.shape[0] == rows * cols + 1 and lay.n_image_tokens == side ** 2 * (rows * cols + 1)
    # features naming (tile, patch row, patch col), through the model's own pixel shuffle, in sequence order
    p = side * 2
    r, c = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    named = torch.stack([torch.stack([torch.full_like(r, t), r, c], -1) for t in range(pixels.shape[0])]).float()
    shuffled = vlm.model.model.pixel_shuffle(named, scale_factor=vlm.config.downsample_ratio)  # [T, s, s, 4 * 3]
    in_seq = shuffled.reshape(-1, 4, 3)[:, 0]  # first merged patch of each token: (tile, 2i, 2j)
    at = in_seq[torch.argsort(torch.argsort(lay.image_positions))]  # what sits at each column
    tile_of, row_of, col_of = (tiles.to_map(at.T.contiguous())[k] for k in range(3))
    R, C = torch.meshgrid(torch.arange(rows * side), torch.arange(cols * side), indexing="ij")
    torch.testing.assert_close(row_of, (2 * (R % side)).float())
    torch.testing.assert_close(col_of, (2 * (C % side)).float())
    # the tile at canvas block (br, bc) was cut from that block of the image (processor's pixels)
    centres = tile_centres(vlm, pixels)
    for br in range(rows):
        for bc in range(cols):
            t = int(tile_of[br * side, bc * side])
            assert (tile_of[br * side:(br + 1) * side, bc * side:(bc + 1) * side] == t).all()
            torch.testing.assert_close(centres[t], torch.tensor([(bc + 0.5) / cols, (br + 0.5) / rows]), atol=0.03, rtol=0)
    assert (thumb.to_map(at.T.contiguous())[0] == rows * cols).all()  # the thumbnail is the last crop...
    torch.testing.assert_close(centres[-1], torch.tensor([0.5, 0.5]), atol=0.03, rtol=0)  # ...of the whole image


def test_multi_image_samples_and_exact_collection(vlm):
    batch = vlm.prepare([[position_image(40, 60), position_image(90, 50)], position_image(30, 30)], ["two ?", "one ?"])
    two, one = batch.layouts
    assert [(g.image, g.name) for g in two.grids] == [(0, "tiles"), (0, "thumbnail"), (1, "tiles"), (1, "thumbnail")]
    assert [g.name for g in one.grids] == ["image"]
    ids = batch.model_inputs["input_ids"][0]
    tok = vlm.processor.tokenizer
    # each image's run is wrapped in <img> ... </img>: the text rows start right after the last </img>
    assert int(ids[two.image_positions.min() - 1]) == tok.start_image_token_id
    assert int(ids[two.image_positions.max() + 1]) == tok.end_image_token_id
    assert int(two.text_positions[0]) == int(two.image_positions.max()) + 1
    assert_rows_equal_eager(vlm, batch, vta.record_attention(vlm, batch))  # collector exact on this layout


def test_cls_methods_and_full_features_are_refused_with_the_reason(vlm, images):
    batch = vlm.prepare([images[0]], ["what ?"])
    with pytest.raises(UnsupportedModelError, match="pixel shuffle"):
        vta.prune.run(vlm, batch, "fastervlm", keep=0.5)
    full = tiny.build("internvl", seed=0)
    full.config.vision_feature_select_strategy = "full"
    with pytest.raises(UnsupportedModelError, match="'default'"):
        full.prepare([images[0]], ["what ?"])


@pytest.fixture(scope="module")
def released():
    """A scaled-down random model on the released defaults: InternVLConfig() (InternViT 448 px, patch 14,
    downsample 0.5, 'default' features) and the processor of InternVL3-1B-hf's settings
    (GotOcr2ImageProcessor 448 px, crop_to_patches, 1..12 tiles; 256 tokens per tile)."""
    tok = word_tokenizer(extra_special=["<|im_start|>", "<|im_end|>"], named_special=tiny.INTERNVL_NAMED)
    cfg = transformers.InternVLConfig(image_token_id=tok.context_image_token_id).to_dict()
    cfg["text_config"]["vocab_size"] = len(tok)
    config = transformers.AutoConfig.for_model(**tiny.scale_down_config(cfg))
    image_processor = transformers.GotOcr2ImageProcessor(size={"height": 448, "width": 448}, crop_to_patches=True,
                                                         min_patches=1, max_patches=12)
    processor = transformers.InternVLProcessor(image_processor=image_processor, tokenizer=tok,
                                               video_processor=transformers.InternVLVideoProcessor(),
                                               image_seq_length=256, chat_template=tiny.INTERNVL_TEMPLATE)
    torch.manual_seed(0)
    return VLM(transformers.InternVLForConditionalGeneration(config), processor)


@pytest.mark.parametrize("size,tiles", [((448, 448), None), ((600, 800), (48, 64)), ((250, 1000), (16, 64))])
def test_released_arithmetic(released, size, tiles):
    """448 px square: one tile of 16 x 16 = 256 tokens, no thumbnail; 800 x 600 (4:3): 4 x 3 = 12 tiles,
    the cap, + thumbnail = 13 x 256 = 3,328 tokens; 1000 x 250 (4:1): 4 x 1 tiles + thumbnail = 1,280."""
    batch = released.prepare([position_image(*size)], ["what is this ?"])
    lay = batch.layouts[0]
    if tiles is None:
        assert [g.shape for g in lay.grids] == [(16, 16)] and lay.n_image_tokens == 256
    else:
        assert [g.shape for g in lay.grids] == [tiles, (16, 16)]
        assert lay.n_image_tokens == 256 * (tiles[0] * tiles[1] // 256 + 1)
    out = released.model(**batch.model_inputs)  # the model takes these counts: they are its own
    assert out.logits.shape[1] == batch.model_inputs["input_ids"].shape[1]
