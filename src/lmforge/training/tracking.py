"""Where training numbers go: TensorBoard event files and a JSONL history."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class RunLogger:
    """Writes scalars to TensorBoard (``logs/``) and every record to ``logs/history.jsonl``."""

    def __init__(self, log_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self.history: list[dict[str, Any]] = []
        self._writer = None
        self._jsonl = None
        if not enabled:
            return
        log_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = (log_dir / "history.jsonl").open("a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(log_dir))
        except ImportError:  # tensorboard is a dependency, but a broken install must not stop a run
            log.warning("tensorboard is not installed; logging to logs/history.jsonl only")

    def log(self, step: int, values: dict[str, float], prefix: str) -> None:
        record = {"step": step, "split": prefix, **values}
        self.history.append(record)
        if not self.enabled:
            return
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._writer is not None:
            for key, value in values.items():
                if isinstance(value, int | float):
                    self._writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
        if self._writer is not None:
            self._writer.close()
