"""Run one piece of the grown deep demo's recipe (`vtanalysis.train_grow`, issue 42) on one CPU thread.

    OMP_NUM_THREADS=1 python training/grow.py --minutes 45

The piece trains in the scratch folder runs/demo-grow (its checkpoint has the optimizer state) and,
when it stops, exports the weights (fp16, no optimizer) to training/demo-grow/weights.pt and appends
its record (steps, seconds per step, held-out probes, retrieval, exact match overall and per
question type, per-layer measures) to training/demo-grow/training.json. A new session without the
scratch folder resumes from the exported weights (fresh optimizer, re-warmed learning rate); commit
both files after every piece.
"""
import argparse
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from vtanalysis import train_grow  # noqa: E402

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
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    kept = Path(a.kept)
    weights = kept / "weights.pt"
    train_grow.train(a.out, train_grow.GrowRecipe(), device=a.device, minutes=a.minutes, max_steps=a.max_steps,
                     resume_from=weights if weights.is_file() else None, export_to=weights,
                     training_json=kept / "training.json", note=a.note, log=lambda m: print(m, flush=True))


if __name__ == "__main__":
    main()
