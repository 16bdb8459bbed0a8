"""Batch orders that are pure functions of (seed, epoch): resumable at any batch.

Two orders: plain shuffled batches, and length-grouped batches (the default), which put
examples of similar length together so dynamic padding pads little. On Financial
PhraseBank a random batch of 32 pads to about twice the mean length; a grouped one
wastes a few percent.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

# Examples are sorted by length within windows of this many batches. Larger windows pad
# less but make batch composition less random; 50 is what HF's LengthGroupedSampler uses.
GROUP_WINDOW_BATCHES = 50


class EpochBatchSampler(Sampler[list[int]]):
    """Yields the batches of epoch ``epoch`` (seeded by ``seed + epoch``), from ``start_batch`` on.

    Unlike a ``RandomSampler`` fed by a running generator, the order of epoch ``e`` does not
    depend on how many epochs were iterated before in this process, so a resumed run sees
    exactly the batches an uninterrupted run would have seen.

    In a distributed run every rank computes the same global batches and takes its
    :meth:`shard` of each, so the global batch is ``batch_size`` whatever the number of
    processes, and the data order (hence a resume) does not depend on it either.

    With ``lengths``, batches are length-grouped: the epoch's permutation is cut into
    windows of ``window`` batches, each window is sorted by length and cut
    into batches, and then *all* batches of the epoch are shuffled. The final shuffle is
    what keeps accuracy: the model never sees a run of short (or long) batches in a row,
    and batch composition stays random apart from length. Every example appears exactly
    once per epoch in both modes.
    """

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        lengths: Sequence[int] | None = None,
        window: int = GROUP_WINDOW_BATCHES,
        rank: int = 0,
        world_size: int = 1,
    ):
        if lengths is not None and len(lengths) != num_examples:
            raise ValueError(f"{num_examples} examples but {len(lengths)} lengths")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.window = window
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start_batch = 0
        self._cached: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return -(-self.num_examples // self.batch_size)

    def batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch``, in order."""
        size = self.batch_size
        if not self.shuffle:
            return [
                list(range(i, min(i + size, self.num_examples)))
                for i in range(0, self.num_examples, size)
            ]
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.num_examples, generator=generator).numpy()
        if self.lengths is None:
            return [order[i : i + size].tolist() for i in range(0, len(order), size)]
        window = size * self.window
        grouped = []
        for start in range(0, len(order), window):
            chunk = order[start : start + window]
            # Stable sort: ties keep the random order, so equal lengths still mix.
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            grouped += [chunk[i : i + size].tolist() for i in range(0, len(chunk), size)]
        # Only the last window can end in a short batch; it stays one batch of the epoch.
        shuffle = torch.randperm(len(grouped), generator=generator).tolist()
        return [grouped[i] for i in shuffle]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """:meth:`batches`, computed once per epoch."""
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, self.batches(epoch))
        return self._cached[1]

    def shard(self, batch: list[int]) -> list[int]:
        """This rank's part of a global batch: every ``world_size``-th example from ``rank`` on.

        Striding (not cutting into blocks) gives every rank the same mix of lengths from a
        length-sorted batch, so no rank waits for another. A rank left without an example
        (a last batch smaller than the world) gets the batch's first one with weight 0.
        """
        return batch[self.rank :: self.world_size] or batch[:1]

    def loss_scale(self, epoch: int, index: int) -> float:
        """Factor for this rank's mean loss on batch ``index`` so that the all-reduced (averaged)
        gradient equals the gradient of the mean loss over the whole global batch."""
        if self.world_size == 1:
            return 1.0
        batch = self.epoch_batches(epoch)[index]
        return len(batch[self.rank :: self.world_size]) * self.world_size / len(batch)

    def global_size(self, epoch: int, index: int) -> int:
        """Examples in global batch ``index`` of ``epoch`` (all ranks together)."""
        return len(self.epoch_batches(epoch)[index])

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.epoch_batches(self.epoch)[self.start_batch :]:
            yield self.shard(batch)
