"""Several processes (`accelerate launch -m vtanalysis ...`): which one this is, its part of the
dataset, and waiting for the others.

Each process works on a contiguous `part` of the samples (accelerate's `split_between_processes`
rule) and writes what it computed to its own files before the others read them (collect: a shard
folder, eval: a records file), so a killed process loses only its own unfinished part. Parts are
read in rank order, which is dataset order, so merged results do not depend on the number of
processes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import VTAError


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
        """[start, stop) of this process's part of n items."""
        return span(n, self.rank, self.world)


ONE = Processes()


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
