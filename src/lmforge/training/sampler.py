"""A shuffled batch order that is a pure function of (seed, epoch): resumable at any batch."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochBatchSampler(Sampler[list[int]]):
    """Yields batches of a permutation seeded by ``seed + epoch``, from ``start_batch`` on.

    Unlike a ``RandomSampler`` fed by a running generator, the order of epoch ``e`` does not
    depend on how many epochs were iterated before in this process, so a resumed run sees
    exactly the batches an uninterrupted run would have seen.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int, shuffle: bool = True):
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return -(-self.num_examples // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_examples, generator=generator).tolist()
        else:
            order = list(range(self.num_examples))
        for b in range(self.start_batch, len(self)):
            yield order[b * self.batch_size:(b + 1) * self.batch_size]
