"""Bad input gets a clear error naming the problem and the fix (foundation issue, 'Done when' 3)."""
import json

import pytest
import transformers

import vtanalysis as vta
from vtanalysis.models import tiny


@pytest.fixture(scope="module")
def llava():
    return tiny.build("llava")


def test_prompt_without_image_token(llava, images):
    with pytest.raises(vta.PromptError, match=r"no image placeholder '<image>'.*Put one"):
        llava.prepare([images[0]], prompts=["USER: what is this? ASSISTANT:"])


def test_more_images_than_image_tokens(llava, images):
    with pytest.raises(vta.PromptError, match=r"1 image placeholder.*but 2 image"):
        llava.prepare([[images[0], images[1]]], prompts=["USER: <image>\nwhat is this? ASSISTANT:"])


def test_image_that_cannot_be_decoded(llava, tmp_path):
    bad = tmp_path / "photo.png"
    bad.write_bytes(b"this is not a png at all")
    with pytest.raises(vta.ImageError, match=r"could not decode image .*photo.png.*re-export"):
        llava.prepare([bad], ["what is this ?"])


def test_missing_image_file(llava, tmp_path):
    with pytest.raises(vta.ImageError, match="not found"):
        llava.prepare([tmp_path / "nope.jpg"], ["what is this ?"])


@pytest.mark.parametrize("layer", [3, -4, 100])
def test_layer_index_out_of_range(llava, images, layer):
    batch = llava.prepare([images[0]], ["what is this ?"])
    with pytest.raises(vta.LayerError, match=r"3 decoder layers \(0\.\.2\)"):
        vta.record_attention(llava, batch, layers=[layer])


def test_unsupported_model_lists_supported_families(tmp_path):
    transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(vta.UnsupportedModelError, match=r"'gpt2' is not supported.*llava-1\.5.*llava-next.*qwen2-vl"):
        vta.load_vlm(tmp_path)


def test_mismatched_batch_sizes(llava, images):
    with pytest.raises(vta.PromptError, match="one entry per sample"):
        llava.prepare(images[:2], ["only one question ?"])


def test_heads_argument_is_checked(llava, images):
    batch = llava.prepare([images[0]], ["what ?"])
    with pytest.raises(vta.VTAError, match="heads must be"):
        vta.record_attention(llava, batch, heads="max")


def test_images_are_loaded_upright_from_their_exif_orientation(tmp_path):
    """Issue 20: a phone photo tagged 'rotate 90' reached the model sideways. EXIF orientation 6
    means the stored pixels must be turned 90 degrees clockwise to be seen upright."""
    import numpy as np
    from PIL import Image

    from vtanalysis.inspection import decode_upload
    from vtanalysis.models.images import load_image

    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :10] = 255  # a white band on the left of the stored (landscape) pixels
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    img.save(path, exif=exif, quality=95)
    for loaded in (load_image(path), load_image(Image.open(path)), decode_upload(path.read_bytes(), "phone.jpg")):
        arr = np.asarray(loaded)
        assert arr.shape[:2] == (40, 20)  # portrait once upright
        assert arr[:10].mean() > 200 and arr[-10:].mean() < 50  # the band is now on top
