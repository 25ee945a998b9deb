"""Token layouts against the released models' own processors (files in ../shared/realproc).

Counts are derived from each config, never written in: LLaVA-1.5's (336/14)^2 grid, LLaVA-NeXT's
base + unpadded tiles + newlines, Qwen2-VL's merged (h/2, w/2) grid.
"""
import numpy as np
import pytest
import torch

import vtanalysis as vta
from realproc import build_realproc_model
from reference import assert_rows_equal_eager


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = vta.load_vlm(build_realproc_model(name, tmp_path_factory.mktemp(name)))
        return cache[name]
    return get


def photo(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_llava15_layout_matches_config(real):
    vlm = real("llava-1.5-7b-hf")
    vc = vlm.config.vision_config
    side = vc.image_size // vc.patch_size
    batch = vlm.prepare([photo(480, 640), photo(200, 300)], ["What is shown?", "Describe the image in detail please."])
    ids = batch.model_inputs["input_ids"]
    for b, lay in enumerate(batch.layouts):
        assert lay.grids[0].shape == (side, side) and lay.n_image_tokens == side * side
        assert (ids[b, lay.image_positions] == vlm.config.image_token_id).all()
        assert torch.equal(lay.image_positions, torch.arange(lay.image_positions[0], lay.image_positions[0] + side * side))
        # "USER:" before the image; the prompt ends with the chat template's "ASSISTANT:"
        assert lay.prefix.stop - lay.prefix.start == 5
        assert lay.last_position == ids.shape[1] - 1
    assert batch.prompts[0] == "USER: <image>\nWhat is shown? ASSISTANT:"


def test_llava15_real_config_rows_equal_eager(real):
    vlm = real("llava-1.5-7b-hf")
    batch = vlm.prepare([photo(480, 640), photo(200, 300)], ["What is shown?", "Describe the image in detail please."])
    assert_rows_equal_eager(vlm, batch, vta.record_attention(vlm, batch))


@pytest.mark.parametrize("size", [(512, 512), (300, 700), (700, 300)])
def test_llava_next_layout_follows_the_models_packing(real, size):
    """Columns map to the cells pack_image_features puts at those sequence positions."""
    vlm = real("llava-v1.6-mistral-7b-hf")
    batch = vlm.prepare([photo(*size)], ["What is shown?"])
    lay = batch.layouts[0]
    vc = vlm.config.vision_config
    side = vc.image_size // vc.patch_size
    n_patches = batch.model_inputs["pixel_values"].shape[1]
    # Fake features that name themselves: (patch, row, col) for every token of every patch.
    r, c = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    feats = torch.stack([torch.stack([torch.full_like(r, p), r, c], -1).view(-1, 3) for p in range(n_patches)]).float()
    newline = torch.tensor([-1.0, -1.0, -1.0])
    packed, lens = vlm.model.model.pack_image_features([feats], batch.model_inputs["image_sizes"], "default", newline)
    packed = torch.cat(list(packed)) if isinstance(packed, (list, tuple)) else packed
    assert lens[0] == lay.n_image_tokens
    start = int(lay.image_positions.min())
    in_seq = packed[lay.image_positions - start]  # what the model puts at each column's position
    base, tiles = lay.grids
    assert base.shape == (side, side)
    torch.testing.assert_close(base.to_map(in_seq.T)[0], torch.zeros(side, side))  # patch 0 is the base image
    torch.testing.assert_close(base.to_map(in_seq.T)[1], r.float())
    tile_rows, tile_cols = tiles.to_map(in_seq.T)[1:]
    assert (in_seq[tiles.columns, 0] >= 1).all()
    # Along a grid row the in-patch column advances by one (mod side); along a column the row does.
    assert ((tile_cols[:, 1:] - tile_cols[:, :-1]) % side == 1).all()
    assert ((tile_rows[1:] - tile_rows[:-1]) % side == 1).all()
    assert (in_seq[lay.newline_columns] == -1).all() and len(lay.newline_columns) == tiles.shape[0]


def test_qwen2_vl_layout_matches_mrope_positions(real):
    vlm = real("Qwen2-VL-2B")
    batch = vlm.prepare([photo(512, 512), photo(300, 700)], ["What is shown?", "Describe the image in detail."])
    merge = vlm.config.vision_config.spatial_merge_size
    thw = batch.model_inputs["image_grid_thw"]
    inputs = batch.model_inputs
    pos, _ = vlm.model.model.get_rope_index(inputs["input_ids"], inputs.get("mm_token_type_ids"),
                                            image_grid_thw=thw, attention_mask=inputs["attention_mask"])
    for b, lay in enumerate(batch.layouts):
        (grid,) = lay.grids
        t, h, w = thw[b].tolist()
        assert grid.shape == (h // merge, w // merge) and lay.n_image_tokens == t * h * w // merge**2
        rows = pos[1, b, lay.image_positions]
        cols = pos[2, b, lay.image_positions]
        rr, cc = torch.meshgrid(torch.arange(grid.shape[0]), torch.arange(grid.shape[1]), indexing="ij")
        assert torch.equal(grid.to_map(rows - rows.min()), rr)
        assert torch.equal(grid.to_map(cols - cols.min()), cc)
    # 512 x 512 -> 36 x 36 patches of 14 px -> 18 x 18 merged tokens (known for this processor)
    assert batch.layouts[0].grids[0].shape == (18, 18)


def test_qwen2_vl_real_config_rows_equal_eager(real):
    vlm = real("Qwen2-VL-2B")
    batch = vlm.prepare([photo(112, 224), photo(300, 200)], ["What is shown?", "Describe it."])
    assert_rows_equal_eager(vlm, batch, vta.record_attention(vlm, batch))
