"""Several processes (`accelerate launch -m vtanalysis ...`): which one this is, its part of the
dataset, waiting for the others, and per-sample rows gathered through files.

Each process works on a contiguous `part` of the samples (accelerate's `split_between_processes`
rule) and writes what it computed to its own file before the others read it, so a process that
was killed loses only its own unfinished part: relaunched with the same number of processes, the
finished parts are read back and only the missing one is computed again. Rows are concatenated in
rank order, which is dataset order, so merged results do not depend on the number of processes.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import VTAError
from .files import atomic_write


def shard(items: list, rank: int, world: int) -> list:
    """Process `rank`'s contiguous part of `items` as accelerate's `split_between_processes` splits
    them: len // world each, the first len % world processes one more."""
    start, stop = span(len(items), rank, world)
    return items[start:stop]


def span(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of process `rank`'s part of n items (see `shard`)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


@dataclass(frozen=True)
class Processes:
    """This process's place among `world` processes (one process: rank 0 of 1, and every method
    is a no-op). `state` is accelerate's `PartialState` when there are several."""

    rank: int = 0
    world: int = 1
    state: object = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wait(self) -> None:
        """Block until every process is here (accelerate's `wait_for_everyone`)."""
        if self.world > 1:
            self.state.wait_for_everyone()

    def span(self, n: int) -> tuple[int, int]:
        return span(n, self.rank, self.world)

    def part(self, items: list) -> list:
        return shard(items, self.rank, self.world)

    def gather(self, folder: str | Path, name: str, compute) -> list:
        """Every process's rows, in rank order, on every process.

        compute(): this process's rows (a JSON-able list), called unless folder/NAME.part-R-of-N.json
        already holds them (a relaunch after an interruption). With one process, compute() and no file.
        """
        if self.world == 1:
            return compute()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        mine = part_file(folder, name, self.rank, self.world)
        if not mine.is_file():
            rows = compute()
            atomic_write(mine, lambda tmp: tmp.write_text(json.dumps(rows)))
        self.wait()
        rows = []
        for rank in range(self.world):
            rows += read_part(part_file(folder, name, rank, self.world))
        self.wait()  # nobody goes on (and may rewrite a part) before all have read
        return rows


ONE = Processes()


def part_file(folder: Path, name: str, rank: int, world: int) -> Path:
    return folder / f"{name}.part-{rank}-of-{world}.json"


def read_part(path: Path) -> list:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise VTAError(f"{path} is missing: its process did not finish; relaunch with the same number of "
                       "processes (finished parts are kept).") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise VTAError(f"{path} is corrupt ({err}); delete it and relaunch with the same number of processes "
                       "(only that part is computed again).") from None


def current() -> Processes:
    """The processes of this run: under `accelerate launch` with several (WORLD_SIZE > 1),
    accelerate's `PartialState` (NCCL between GPUs, gloo between CPU processes); else `ONE`."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return ONE
    try:
        from accelerate import PartialState
    except ImportError as err:
        raise VTAError("several processes (WORLD_SIZE > 1) need accelerate: pip install 'vtanalysis[scale]'.") from err
    import torch

    state = PartialState(cpu=not torch.cuda.is_available())
    return Processes(state.process_index, state.num_processes, state)
