"""Add the shipped small demo's held-out exact match and per-layer measures (`train_grow.layer_profile`)
to training/demo-grow/training.json as "reference": what every grown-model measure is compared with.

    OMP_NUM_THREADS=1 python training/grow_reference.py
"""
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from vtanalysis.models.demo import train_grow  # noqa: E402
from vtanalysis.files import atomic_write  # noqa: E402

PATH = Path(__file__).resolve().parent / "demo-grow" / "training.json"


def main() -> None:
    torch.set_num_threads(1)
    small = train_grow.shipped()
    ref = {"model": "shipped small demo (4 layers), its own tower", **train_grow.exact_match(small, 200),
           "layers": train_grow.layer_profile(small, 48)}
    doc = json.loads(PATH.read_text())
    doc["reference"] = ref
    atomic_write(PATH, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))
    print(json.dumps(ref))


if __name__ == "__main__":
    main()
