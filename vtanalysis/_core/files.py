"""Writing results so that nothing is half-written, lost or unreadable to colleagues, and knowing
when a cached result is stale."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ..errors import VTAError

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # vtanalysis/, above this _core/


def output_folder(path: str | Path) -> Path:
    """`path` as an existing folder (created if missing), or a `VTAError` when it names a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise VTAError(f"--out '{path}' is a file; pass a folder (it is created if missing).")
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path: str | Path, write) -> Path:
    """Call write(tmp_path), flush it to disk (fsync), give it the usual permissions (0666 minus
    the umask: some writers, e.g. safetensors, create files 0600) and rename it over `path`, so
    readers never see a half-written file and a crash leaves the old one intact."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
    return path


def data_fingerprint(folder: str | Path) -> str:
    """A short hash of a dataset folder's questions.jsonl and of the name, size and modification
    time of every file in it: it changes when questions, answers or images change."""
    folder = Path(folder)
    h = hashlib.sha1()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    questions = folder / "questions.jsonl"
    if questions.is_file():
        h.update(questions.read_bytes())
    return h.hexdigest()[:12]


@torch.no_grad()
def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model's weights (per-tensor sums and absolute sums, read back once): it
    changes when the weights do, e.g. after retraining the demo."""
    stats = torch.stack([torch.stack([p.double().sum(), p.double().abs().sum()]) for p in model.parameters()])
    return hashlib.sha1(json.dumps(stats.cpu().tolist()).encode()).hexdigest()[:12]  # ok-host: once, before a run


def code_fingerprint() -> str:
    """A short hash of vtanalysis' own source files: a cached result made by other code is stale."""
    h = hashlib.sha1()
    for p in sorted(PACKAGE_ROOT.rglob("*.py")):
        h.update(p.read_bytes())
    return h.hexdigest()[:12]
