"""Training streams whose batch at step s is a pure function of (seed, s), spread over loader workers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info


class StepStream(IterableDataset, ABC):
    """An endless stream of `batch(step)` from `first_step()` on.

    With DataLoader workers, worker k of n makes steps first + k, first + k + n, ...; the loader
    takes one item from each worker in turn, so batches still arrive in step order and a run gives
    the same batches with any number of workers. `reopen()` runs in each worker first (file handles).
    """

    def __init__(self, first_step: Callable[[], int] = lambda: 0) -> None:
        self.first_step = first_step

    @abstractmethod
    def batch(self, step: int) -> Any:
        """The batch of training step `step`."""

    def reopen(self) -> None:
        """Reopen files inherited from the parent process; nothing by default."""

    def __iter__(self) -> Iterator[Any]:
        step, stride = self.first_step(), 1
        worker = get_worker_info()
        if worker is not None:
            self.reopen()
            step, stride = step + worker.id, worker.num_workers
        while True:
            yield self.batch(step)
            step += stride
