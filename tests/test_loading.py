"""load_vlm takes the path users take (from_pretrained on a folder), offline."""
import os
import subprocess
import sys
import textwrap

import torch

import vtanalysis as vta
from vtanalysis.models import tiny


def test_saved_tiny_model_reloads_identically(tmp_path, images):
    vlm = tiny.build("llava-next")
    vlm.model.save_pretrained(tmp_path)
    vlm.processor.save_pretrained(tmp_path)
    again = vta.load_vlm(tmp_path)
    assert again.adapter.family == "llava-next"
    assert again.model.config.text_config._attn_implementation == "sdpa"
    b1 = vlm.prepare(images, ["what ?", "how many ?", "is it red ?"])
    b2 = again.prepare(images, ["what ?", "how many ?", "is it red ?"])
    assert torch.equal(b1.model_inputs["input_ids"], b2.model_inputs["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(vlm.model(**b1.model_inputs).logits, again.model(**b2.model_inputs).logits)


def test_load_in_fresh_offline_process(tmp_path):
    vlm = tiny.build("qwen2-vl")
    vlm.model.save_pretrained(tmp_path)
    vlm.processor.save_pretrained(tmp_path)
    code = textwrap.dedent(f"""
        import numpy as np, vtanalysis as vta
        vlm = vta.load_vlm({str(tmp_path)!r})
        batch = vlm.prepare([np.zeros((64, 96, 3), np.uint8)], ["what color ?"])
        rec = vta.record_attention(vlm, batch)
        print(vlm.adapter.family, rec[0].text_to_image.shape[0])
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["qwen2-vl", "3"]


def test_tiny_names_load_through_load_vlm():
    vlm = vta.load_vlm("tiny-llava")
    assert vlm.adapter.family == "llava-1.5" and vlm.num_layers == 3


def test_a_checkpoint_with_a_renamed_weight_is_refused_not_loaded_at_random(tmp_path):
    """Issue 23: on transformers 5.0-5.5 the demo's vision tower loaded randomly initialised, with
    only a printed table. A weight missing from (or unexpected in) a checkpoint is a WeightsError
    naming it; strict=False loads anyway, with a warning; the intact demo loads silently."""
    import shutil
    import warnings

    import pytest
    from safetensors.torch import load_file, save_file

    import vtanalysis as vta
    from vtanalysis.models import demo

    copy = tmp_path / "demo"
    shutil.copytree(demo.WEIGHTS, copy)
    (weights,) = copy.glob("*.safetensors")
    tensors = load_file(weights)
    key = next(k for k in tensors if "vision_tower" in k and k.endswith("q_proj.weight"))
    tensors[key.replace("q_proj", "q_projection")] = tensors.pop(key)
    save_file(tensors, weights, metadata={"format": "pt"})
    import re

    with pytest.raises(vta.WeightsError, match=rf"transformers 5\.\d+.*1 missing \(e\.g\. [\w.]*{re.escape(key)}\).*1 unexpected"):
        vta.load_vlm(copy)
    with pytest.warns(UserWarning, match="missing"):
        vta.load_vlm(copy, strict=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vta.load_vlm("demo")
