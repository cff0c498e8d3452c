"""Training streams whose batch at step s is a pure function of (seed, s), spread over loader workers
and shared out between ranks and micro-steps; an even split of validation data over ranks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, IterableDataset, get_worker_info


def distributed_rank_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class StepStream(IterableDataset, ABC):
    """An endless stream of `batch(step)` from `first_step()` on, or of this rank's shares of it.

    `batch(step)` is the global batch of optimizer step `step`. Rank r of `world`, accumulating
    gradients over `accumulate` micro-steps, gets at micro-step k rows [p*m, (p+1)*m) of it, with
    p = k * world + r and m = rows / (world * accumulate): the shares of all ranks and micro-steps are
    disjoint and together exactly the batch a one-device run takes in one step. Every rank builds the
    whole global batch of a step (samplers reject windows by content, so a window's position depends on
    the windows drawn before it) and keeps its share; a one-entry cache builds it once per step.
    Rank and world come from `shard()` (TrainRecipe.fit sets them from the trainer), else from
    torch.distributed when it is initialised, else (0, 1).

    With DataLoader workers, worker w of n makes items first + w, first + w + n, ... (an item is one
    micro-step of one rank); the loader takes one item from each worker in turn, so batches still
    arrive in order and a run gives the same batches with any number of workers. `reopen()` runs in
    each worker first (file handles).
    """

    def __init__(self, first_step: Callable[[], int] = lambda: 0, rank: int | None = None,
                 world: int | None = None, accumulate: int = 1) -> None:
        self.first_step = first_step
        self.rank, self.world, self.accumulate = rank, world, accumulate

    @abstractmethod
    def batch(self, step: int) -> Any:
        """The (global) batch of training step `step`."""

    def reopen(self) -> None:
        """Reopen files inherited from the parent process; nothing by default."""

    def shard(self, rank: int, world: int, accumulate: int = 1) -> None:
        """Read rank `rank` of `world`'s shares, `accumulate` micro-steps per optimizer step."""
        self.rank, self.world, self.accumulate = rank, world, accumulate

    def part(self, batch: Any, index: int, parts: int) -> Any:
        """Share `index` of `parts` equal row ranges of `batch` (a tensor, or a tuple/list of tensors
        with the same rows). Copied, so that the global batch is not kept alive (or sent between
        processes) through a view."""
        tensors = list(batch) if isinstance(batch, (tuple, list)) else [batch]
        rows = len(tensors[0])
        if rows % parts:
            raise ValueError(f"a batch of {rows} rows does not split into {parts} equal shares "
                             "(devices x accumulated micro-steps)")
        size = rows // parts
        shares = [t[index * size:(index + 1) * size].clone() for t in tensors]
        return type(batch)(shares) if isinstance(batch, (tuple, list)) else shares[0]

    def __iter__(self) -> Iterator[Any]:
        rank, world = (self.rank, self.world) if self.world is not None else distributed_rank_world()
        assert rank is not None
        accumulate = self.accumulate
        parts = world * accumulate
        item, stride = self.first_step() * accumulate, 1
        worker = get_worker_info()
        if worker is not None:
            self.reopen()
            item, stride = item + worker.id, worker.num_workers
        cached: tuple[int, Any] | None = None
        while True:
            step, micro = divmod(item, accumulate)
            if parts == 1:
                yield self.batch(step)
            else:
                if cached is None or cached[0] != step:
                    cached = (step, self.batch(step))
                yield self.part(cached[1], micro * world + rank, parts)
            item += stride


class EvenSplit(Dataset):
    """Rank r of `world`'s share of `dataset`: items r, r + world, ..., padded to ceil(n / world) items
    so that every rank runs the same number of batches (DDP may communicate in a forward pass: a rank
    with fewer batches would hang the others). Padding repeats a real item (the same shapes as the
    rest of the batch). With `mark_padding`, items are `(item, keep)` with keep False on padding, which
    the modules leave out of their sums, so no window counts twice; without it, items are as the
    dataset gives them and padding (at most one item per rank, only when world does not divide n)
    counts. Lightning's DistributedSampler would pad with repeats that count (TrainRecipe turns it off).

    Rank and world come from `shard()`, else from torch.distributed when initialised, else (0, 1).
    """

    def __init__(self, dataset: Any, mark_padding: bool = True, rank: int | None = None,
                 world: int | None = None) -> None:
        self.dataset, self.mark_padding, self.rank, self.world = dataset, mark_padding, rank, world

    def shard(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world

    def _rank_world(self) -> tuple[int, int]:
        if self.world is not None:
            assert self.rank is not None
            return self.rank, self.world
        return distributed_rank_world()

    def __len__(self) -> int:
        _, world = self._rank_world()
        return -(-len(self.dataset) // world)

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < len(self):
            raise IndexError(index)
        rank, world = self._rank_world()
        position = index * world + rank
        keep = position < len(self.dataset)
        item = self.dataset[position if keep else position % len(self.dataset)]
        return (item, keep) if self.mark_padding else item


def kept(rows: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The rows of a validation batch that are not padding (all of them on one device)."""
    return rows if bool(keep.all()) else rows[keep.to(rows.device)]


def length_schedule(seq_len: int, warmup_start: int | None, stage_steps: int) -> Callable[[int], int]:
    """Sequence length at each step: doubling from `warmup_start` up to `seq_len`, `stage_steps` steps
    per stage (seed paper and HyenaDNA's sequence-length warmup); constant without warmup."""
    if not warmup_start or warmup_start >= seq_len:
        return lambda step: seq_len
    stages = []
    length = warmup_start
    while length < seq_len:
        stages.append(length)
        length *= 2
    return lambda step: stages[step // stage_steps] if step // stage_steps < len(stages) else seq_len
