"""LLaVA-OneVision layouts (issue 18): SigLIP patches without [CLS], anyres-max tiling, newline tokens,
and one base grid per image in multi-image samples; checked against the model's own
`pack_image_features` (features that name their crop, row and column) and against the family's
documented arithmetic (LLaVA-OneVision paper, Sec. 3 "AnyRes-Max": 729 = 27 x 27 tokens per 384 px
crop, SigLIP patch 14; at most 9 crops' worth of tile tokens, resized bilinearly beyond that)."""
import numpy as np
import pytest
import torch
import transformers

from reference import assert_rows_equal_eager

import vtanalysis as vta
from vtanalysis.models import tiny
from vtanalysis.models.llava_next import LlavaNextAdapter
from vtanalysis.models.vlm import VLM
from vtanalysis.models.wordtok import word_tokenizer


def photo(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def vlm():
    return tiny.build("llava-onevision", seed=0)


def named_features(n_crops: int, side: int) -> torch.Tensor:
    """[n_crops, side^2, 3] features (crop, row, col): what the model puts where can be read back."""
    r, c = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    return torch.stack([torch.stack([torch.full_like(r, p), r, c], -1).view(-1, 3) for p in range(n_crops)]).float()


@pytest.mark.parametrize("size,resized", [((40, 60), False), ((120, 40), False), ((128, 128), True)])
def test_columns_follow_the_models_packing(vlm, size, resized):
    batch = vlm.prepare([photo(*size)], ["what color is the circle ?"])
    lay, inputs = batch.layouts[0], batch.model_inputs
    side = vlm.config.vision_config.image_size // vlm.config.vision_config.patch_size
    n_crops = int(inputs["pixel_values"].shape[1])
    newline = torch.tensor([-1.0, -1.0, -1.0])
    packed, lens = vlm.model.model.pack_image_features([named_features(n_crops, side)], inputs["image_sizes"],
                                                       image_newline=newline, vision_aspect_ratio=vlm.config.vision_aspect_ratio)
    assert int(lens[0]) == lay.n_image_tokens
    in_seq = packed[0][lay.image_positions - int(lay.image_positions.min())]  # what sits at each column
    base, tiles = lay.grids
    r, c = torch.meshgrid(torch.arange(side).float(), torch.arange(side).float(), indexing="ij")
    torch.testing.assert_close(base.to_map(in_seq.T)[0], torch.zeros(side, side))  # crop 0 is the base image
    torch.testing.assert_close(base.to_map(in_seq.T)[1], r)
    torch.testing.assert_close(base.to_map(in_seq.T)[2], c)
    assert (in_seq[tiles.columns, 0] > 1 - 1e-5).all()  # tile cells come from the tile crops (also resized)
    assert (in_seq[lay.newline_columns] == -1).all() and len(lay.newline_columns) == tiles.shape[0]
    canvas = LlavaNextAdapter.tile_grid_shape(vlm.adapter, vlm.config, inputs["image_sizes"][0].tolist())  # unresized
    assert (tiles.shape != canvas) == resized  # the anyres_max_9 rule applied exactly when the canvas is too large
    if not resized:  # along a row the in-crop column advances by one (mod side); along a column the row does
        rows, cols = tiles.to_map(in_seq.T)[1:]
        assert ((cols[:, 1:] - cols[:, :-1]) % side == 1).all() and ((rows[1:] - rows[:-1]) % side == 1).all()


def test_multi_image_samples_get_one_base_grid_and_newline_per_image(vlm):
    batch = vlm.prepare([[photo(40, 60), photo(90, 50, seed=1)], photo(64, 64)], ["two ?", "one ?"])
    side = vlm.config.vision_config.image_size // vlm.config.vision_config.patch_size
    two, one = batch.layouts
    assert [g.name for g in two.grids] == ["base", "base"] and two.n_image_tokens == 2 * (side * side + 1)
    assert [g.name for g in one.grids] == ["base", "tiles"]
    assert two.newline_columns == [side * side, 2 * side * side + 1]
    out = vlm.model(**batch.model_inputs)  # the model accepts the token counts: they are its own
    assert out.logits.shape[:2] == batch.model_inputs["input_ids"].shape
    assert_rows_equal_eager(vlm, batch, vta.record_attention(vlm, batch))  # collector exact on this layout


@pytest.fixture(scope="module")
def released():
    """A scaled-down random model on the released defaults: LlavaOnevisionConfig() (SigLIP 384 px,
    patch 14, anyres_max_9, 'full' features) and LlavaOnevisionImageProcessor() (crops 384 px,
    pinpoints 1..6 x 1..6 crops), with 729 tokens per crop in the processor."""
    tok = word_tokenizer(extra_special=["<image>", "<video>", "<|im_start|>", "<|im_end|>"])
    cfg = transformers.LlavaOnevisionConfig(image_token_index=tok.convert_tokens_to_ids("<image>"),
                                            video_token_index=tok.convert_tokens_to_ids("<video>")).to_dict()
    cfg["text_config"]["vocab_size"] = len(tok)
    config = transformers.AutoConfig.for_model(**tiny.scale_down_config(cfg))
    processor = transformers.LlavaOnevisionProcessor(
        image_processor=transformers.LlavaOnevisionImageProcessor(), tokenizer=tok,
        video_processor=transformers.LlavaOnevisionVideoProcessor(), num_image_tokens=729,
        vision_feature_select_strategy="full", chat_template=tiny.ONEVISION_TEMPLATE)
    torch.manual_seed(0)
    return VLM(transformers.LlavaOnevisionForConditionalGeneration(config), processor)


@pytest.mark.parametrize("size,tiles", [((384, 384), (27, 27)), ((2304, 2304), (81, 81))])
def test_released_arithmetic(released, size, tiles):
    """384 px: one crop of 27 x 27 = 729 tokens beside the 729-token base; 2304 px (6 x 6 crops, a
    162 x 162 canvas): resized by r = 162 / 81 = 2 to 81 x 81 = 9 x 729 tokens, the paper's cap.
    Each tile row ends with a newline."""
    lay = released.prepare([photo(*size)], ["what is this ?"]).layouts[0]
    base, tile = lay.grids
    assert base.shape == (27, 27) and tile.shape == tiles
    assert lay.n_image_tokens == 729 + tiles[0] * tiles[1] + tiles[0]
    assert not released.adapter.has_cls


def tower_attentions(vlm, batch, layer):
    """[V, N] the eager SigLIP attention each patch receives at `layer`, mean over queries and heads,
    for the tower's inputs as the model feeds them (caught at the tower)."""
    tower, seen = vlm.model.model.vision_tower, {}
    handle = tower.register_forward_pre_hook(lambda m, a, k: seen.update(pixel_values=a[0] if a else k["pixel_values"]),
                                             with_kwargs=True)
    try:
        with torch.no_grad():
            vlm.model(**batch.model_inputs)
    finally:
        handle.remove()
    vlm.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            att = tower(seen["pixel_values"], output_attentions=True).attentions[layer]  # [V, H, N, N]
    finally:
        vlm.model.set_attn_implementation("sdpa")
    return att.mean(-2).mean(1)


def test_cls_methods_rank_by_the_attention_each_patch_receives(vlm):
    """No [CLS] in SigLIP: FasterVLM, AdaFV, SCOPE and VisPruner rank by VisPruner's substitute for SigLIP
    towers (`attentions[-1].mean(dim=-2)`, head mean); VisionZip and CDPruner still need the token."""
    from vtanalysis.prune.vision import VisionCapture, to_columns

    batch = vlm.prepare([photo(40, 60)], ["what color is the circle ?"])
    want = tower_attentions(vlm, batch, -1)
    with VisionCapture(vlm) as capture, torch.no_grad():
        vlm.model(**batch.model_inputs)
    torch.testing.assert_close(capture.saliency, want, atol=1e-6, rtol=0)
    lay = batch.layouts[0]
    saliency = to_columns(vlm, batch, want[..., None])[0][:, 0]  # through the model's own packing
    k = 10
    res = vta.prune.run(vlm, batch, "fastervlm", k, max_new_tokens=1)
    patches = torch.tensor([c for c in range(lay.n_image_tokens) if c not in lay.newline_columns])
    top = patches[torch.topk(saliency[patches], k).indices].sort().values
    kept = res.kept[0][0].cpu().sort().values
    assert torch.equal(kept[~torch.isin(kept, torch.tensor(lay.newline_columns))], top)  # newlines kept on top
    for method in ("visionzip", "cdpruner"):
        with pytest.raises(vta.errors.UnsupportedModelError, match=r"no \[CLS\] token"):
            vta.prune.run(vlm, batch, method, 0.5)
