"""Who this process is in a distributed run, and the few collectives the recipe needs.

The process group itself comes from an existing launcher: ``torchrun`` (what
``lmforge train --nproc N`` starts), Ray Train (``--ray``), or any launcher that sets the
standard ``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` variables. In a single process every
method here is a no-op, so the recipe reads the same either way.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from lmforge.errors import LmforgeError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Rank and world size of this process; collectives that do nothing when alone."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: str, timeout_minutes: float = 30.0) -> DistContext:
        """Join the process group the launcher describes (gloo on CPU, NCCL on GPU), or run
        alone."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if not dist.is_available() or (world_size <= 1 and not dist.is_initialized()):
            return cls()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "cuda":
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():  # Ray Train and Accelerate may have done it already
            backend = "nccl" if device == "cuda" else "gloo"
            try:
                dist.init_process_group(
                    backend, timeout=datetime.timedelta(minutes=timeout_minutes)
                )
            except (RuntimeError, ValueError) as err:
                raise LmforgeError(
                    f"could not join the distributed run (WORLD_SIZE={world_size}): {err}; "
                    "start it with `lmforge train --nproc N` or torchrun"
                ) from None
        return cls(dist.get_rank(), dist.get_world_size(), local_rank)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order, on every rank (small Python objects only)."""
        if not self.enabled:
            return [value]
        out: list[T | None] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def any(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag OR-ed over all ranks: every rank takes the same decision (stop, checkpoint)."""
        if not self.enabled:
            return tuple(bool(f) for f in flags)
        values = torch.tensor([float(f) for f in flags], device=self._device())
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return tuple(bool(v) for v in values.tolist())

    def sum(self, value: float) -> float:
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self._device())
        dist.all_reduce(tensor)
        return float(tensor.item())

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and give every rank its result; its error is raised on every
        rank."""
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except LmforgeError as err:
                error = str(err)
        result, error = self.broadcast((result, error))
        if error is not None:
            raise LmforgeError(error)
        return result

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (fills caches, downloads); the others follow and reuse its
        work."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def _device(self) -> torch.device:
        backend = dist.get_backend()
        return (
            torch.device("cuda", torch.cuda.current_device())
            if backend == "nccl"
            else torch.device("cpu")
        )
