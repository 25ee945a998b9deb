"""The project's dataset format: a folder with images and a `questions.jsonl`.

Each line of `questions.jsonl` is one sample:

    {"id": "0001", "image": "images/0001.png", "question": "what color is the circle ?",
     "answer": "red", "type": "color"}

`id`, `image` (relative to the folder) and `question` are required; `answer`, `type` and any
other keys are kept in `Sample.extra`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import VTAError

QUESTIONS_FILE = "questions.jsonl"


@dataclass
class Sample:
    id: str
    image: Path
    question: str
    answer: str | None = None
    type: str | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self, root: Path) -> dict:
        row = {"id": self.id, "image": str(self.image.relative_to(root)), "question": self.question}
        if self.answer is not None:
            row["answer"] = self.answer
        if self.type is not None:
            row["type"] = self.type
        return {**row, **self.extra}


def read_samples(folder: str | Path) -> list[Sample]:
    """Read `folder/questions.jsonl`; errors name the file, line and missing key."""
    root = Path(folder)
    path = root / QUESTIONS_FILE
    if not path.is_file():
        raise VTAError(f"no {QUESTIONS_FILE} in '{root}'. A dataset folder holds images and a {QUESTIONS_FILE} "
                       'with one {"id", "image", "question"} object per line.')
    samples, seen = [], set()
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise VTAError(f"{path}:{n}: not valid JSON ({err.msg}).") from err
        missing = [k for k in ("id", "image", "question") if k not in row]
        if missing:
            raise VTAError(f"{path}:{n}: missing key(s) {missing}; each line needs id, image and question.")
        sid = str(row.pop("id"))
        if sid in seen:
            raise VTAError(f"{path}:{n}: duplicate id '{sid}'; ids must be unique.")
        seen.add(sid)
        samples.append(Sample(sid, root / row.pop("image"), row.pop("question"), row.pop("answer", None),
                              row.pop("type", None), row))
    return samples


def write_samples(folder: str | Path, samples: list[Sample]) -> Path:
    """Write `folder/questions.jsonl` for samples whose images lie under `folder`."""
    root = Path(folder)
    path = root / QUESTIONS_FILE
    path.write_text("".join(json.dumps(s.to_json(root)) + "\n" for s in samples))
    return path
