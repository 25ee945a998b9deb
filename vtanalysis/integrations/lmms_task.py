"""The offline lmms-eval task `vtanalysis-shapes`: held-out `data.shapes` scenes, scored by exact
match after `evaluate.normalise`, as `vtanalysis eval` scores them.

`write_task(folder)` writes the dataset (`data.shapes.write_dataset`, the images and
questions.jsonl `vtanalysis eval` reads) and beside it the task: `vtanalysis-shapes.yaml` (pointing
at the dataset by absolute path, since lmms-eval resolves data files from its working directory)
and `utils.py` (the document functions below). Run it with

    lmms-eval --model vtanalysis --model_args pretrained=demo --tasks vtanalysis-shapes --include_path FOLDER
"""
from __future__ import annotations

import json
from pathlib import Path

TASK = "vtanalysis-shapes"
LMMS_FILE = "lmms.jsonl"  # the columns lmms-eval reads (no masks: `datasets` needs flat rows)

YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

UTILS = '''"""Document functions of the vtanalysis-shapes task (written by vtanalysis.integrations.lmms_task)."""
from pathlib import Path

from vtanalysis.integrations.lmms_task import doc_to_text, process_results, visual

ROOT = Path(__file__).parent / "data"


def doc_to_visual(doc):
    return visual(ROOT, doc)
'''


def visual(root: Path, doc: dict) -> list:
    """[the scene's RGB PIL image]."""
    from ..models.images import load_image

    return [load_image(root / doc["image"])]


def doc_to_text(doc: dict) -> str:
    return doc["question"]


def process_results(doc: dict, results: list[str]) -> dict:
    """{"exact_match": 1.0 when the answer equals the reference after `evaluate.normalise`}."""
    from ..experiments.evaluate import normalise

    return {"exact_match": float(normalise(results[0]) == normalise(doc["answer"]))}


def write_task(folder: str | Path, n_images: int = 50, *, seed: int = 0, max_new_tokens: int = 3,
               progress: bool = True) -> Path:
    """Write the task folder (dataset under `folder/data`); returns `folder`. `seed` 0.. are the held-out
    scenes (`train_demo.TRAIN_SEED0`), never trained on; `max_new_tokens` 3 as `vtanalysis eval`."""
    from ..data import read_samples
    from ..data.shapes import write_dataset

    folder = Path(folder).resolve()
    data = folder / "data"
    write_dataset(data, n_images, seed=seed, progress=progress)
    rows = [{"id": s.id, "image": str(s.image.relative_to(data)), "question": s.question, "answer": s.answer,
             "type": s.type} for s in read_samples(data)]
    (data / LMMS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / f"{TASK}.yaml").write_text(YAML.format(task=TASK, data=json.dumps(str(data / LMMS_FILE)),
                                                      max_new_tokens=max_new_tokens))
    (folder / "utils.py").write_text(UTILS)
    return folder
