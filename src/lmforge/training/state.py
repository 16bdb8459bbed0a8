"""Everything about a run's progress that a checkpoint must carry to resume exactly."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class TrainState:
    """Progress counters, early-stopping memory and the current logging window.

    ``batches_in_epoch`` counts micro-batches of the current epoch already consumed; with a
    deterministic per-epoch order it is the exact position at which to continue.
    """

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    examples_seen: int = 0
    train_seconds: float = 0.0
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    stopped_early: bool = False
    final_train_loss: float | None = None
    window_loss_sum: float = 0.0
    window_batches: int = 0
    window_examples: int = 0
    checkpoint_seconds: float = 0.0
    checkpoints_written: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def examples_per_second(self) -> float:
        return self.examples_seen / self.train_seconds if self.train_seconds else 0.0
