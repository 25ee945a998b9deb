"""Run one piece of the grown deep demo's recipe (`vtanalysis.models.demo.train_grow`, issue 42) on one CPU thread.

    OMP_NUM_THREADS=1 python training/grow.py --minutes 45

The piece trains in the scratch folder runs/demo-grow (its checkpoint has the optimizer state) and,
when it stops, exports the weights (fp16, no optimizer) to training/demo-grow/weights.pt and appends
its record (steps, seconds per step, held-out probes, retrieval, exact match overall and per
question type, per-layer measures) to training/demo-grow/training.json. A new session without the
scratch folder resumes from the exported weights (fresh optimizer, re-warmed learning rate); commit
both files after every piece.
"""
import argparse
import dataclasses
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from vtanalysis.models.demo import train_grow  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=45, help="wall-time bound of this piece, evaluations included")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "runs" / "demo-grow"), help="scratch folder (checkpoint, optimizer)")
    ap.add_argument("--kept", default=str(ROOT / "training" / "demo-grow"), help="committed folder")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--note", default="")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a GrowRecipe field changed from this piece on, e.g. drop_trained=0.2")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    kept = Path(a.kept)
    weights = kept / "weights.pt"
    fields = {f.name: f.type for f in dataclasses.fields(train_grow.GrowRecipe)}
    # the recipe goes on as the last piece left it (its checkpoint's), with this piece's changes
    last = Path(a.out) / "checkpoint.pt"
    last = last if last.is_file() else weights
    changes = {k: v for k, v in torch.load(last, weights_only=False)["recipe"].items() if k in fields} \
        if last.is_file() else {}
    for item in a.set:
        key, value = item.split("=", 1)
        changes[key] = (float if fields[key] in (float, "float") else int)(value)
    train_grow.train(a.out, train_grow.GrowRecipe(**changes), device=a.device, minutes=a.minutes, max_steps=a.max_steps,
                     resume_from=weights if weights.is_file() else None, export_to=weights,
                     training_json=kept / "training.json", note=a.note, log=lambda m: print(m, flush=True))


if __name__ == "__main__":
    main()
