"""Where training numbers go: TensorBoard event files and a JSONL history."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class RunLogger:
    """Writes scalars to TensorBoard (``logs/``) and every record to ``logs/history.jsonl``."""

    def __init__(self, log_dir: Path, enabled: bool = True, resume_after_step: int | None = None):
        """Args:
        resume_after_step: When resuming from a checkpoint at this step, records logged after
            it by the interrupted process are dropped (they will be logged again).
        """
        self.enabled = enabled
        self.history: list[dict[str, Any]] = []
        self._writer = None
        self._jsonl = None
        if not enabled:
            return
        log_dir.mkdir(parents=True, exist_ok=True)
        history_file = log_dir / "history.jsonl"
        if resume_after_step is not None and history_file.is_file():
            self.history = [
                r for r in _read_jsonl(history_file) if r.get("step", 0) <= resume_after_step
            ]
            history_file.write_text(
                "".join(json.dumps(r) + "\n" for r in self.history), encoding="utf-8"
            )
        self._jsonl = history_file.open("a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            purge = resume_after_step + 1 if resume_after_step is not None else None
            self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge)
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


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a history file; a line cut off by a crash is skipped."""
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
