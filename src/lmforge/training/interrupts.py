"""Turn SIGINT/SIGTERM into a request the training loop honours at the next step boundary."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class StopRequest:
    """Set by a signal handler; read by the loop after each optimizer step."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None


class TrainingInterrupted(Exception):
    """Raised after the checkpoint for an interrupt has been written."""

    def __init__(self, signum: int, run_dir: str, step: int):
        self.signum, self.run_dir, self.step = signum, run_dir, step
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}")


@contextlib.contextmanager
def graceful_interrupts() -> Iterator[StopRequest]:
    """Within the block, the first SIGINT/SIGTERM only sets a flag; a second one aborts at once."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():  # signals need the main thread
        yield request
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handle(signum, frame):
        if request.requested:  # impatient second signal: behave as before
            signal.signal(signum, previous[signum])
            signal.raise_signal(signum)
            return
        request.signal = signum

    for s in previous:
        signal.signal(s, handle)
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
