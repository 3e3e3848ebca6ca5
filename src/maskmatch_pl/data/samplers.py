"""Samplers that make data order a pure function of (seed, epoch, rank).

Both are ``DistributedSampler`` subclasses, so Lightning keeps them as they are under DDP
instead of swapping in its own; with one process they behave as plain samplers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler


class EpochShuffleSampler(DistributedSampler):
    """Shuffles with ``seed + epoch`` and gives each of ``num_replicas`` ranks a disjoint
    share (the last incomplete round is dropped, so every rank sees the same count).
    :meth:`set_epoch`, which Lightning calls every epoch, also tells the dataset the epoch, so
    that its augmentations are seeded per sample and epoch."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0  # samples of this epoch to skip (mid-epoch resume); len() stays the epoch's

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


class ShardSampler(DistributedSampler):
    """In-order, unpadded shares for evaluation: rank ``r`` gets samples ``r, r + R, ...``, so
    every sample is counted exactly once over all ranks and metrics match one process."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))  # type: ignore[arg-type]
        self.total_size = len(dataset)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


class ResumableDataLoader(DataLoader):
    """A DataLoader over an :class:`EpochShuffleSampler` that can start mid-epoch: after
    :meth:`resume`, its next iteration is the given epoch without the batches already done
    (the order is a pure function of seed and epoch, so those are the ones trained on)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._skip = 0

    def resume(self, epoch: int, batches_done: int) -> None:
        if isinstance(self.sampler, EpochShuffleSampler):
            self.sampler.set_epoch(epoch)
        self._skip = batches_done

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0
        sampler = self.sampler if isinstance(self.sampler, EpochShuffleSampler) else None
        if sampler is not None and 0 < skip < len(self):
            sampler.start = skip * (self.batch_size or 1)
        try:
            yield from super().__iter__()
        finally:
            if sampler is not None:
                sampler.start = 0
