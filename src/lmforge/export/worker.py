"""One model in its own process, measured on request (``lmforge export`` / ``verify``).

Imported first in the forkserver that the workers fork from: it quiets the import-time
notices of torchao and torch (as the CLI does) before transformers pulls them in.
"""

from __future__ import annotations

import logging

for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

import contextlib  # noqa: E402
import multiprocessing  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

from lmforge.errors import LmforgeError  # noqa: E402
from lmforge.inference.predictor import Predictor  # noqa: E402

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import BaseContext

    import numpy as np


class ModelWorker:
    """One model loaded in its own process (a forkserver child: fresh thread pools, modules
    preloaded), measured on request; what it raises comes back as the same one-line error."""

    def __init__(
        self,
        path: Path,
        precision: str,
        texts: list[str],
        pairs: list[str] | None,
        latency_texts: int,
        batch_size: int,
    ):
        context = _context()
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_worker_main,
            daemon=True,
            args=(child, str(path), precision, texts, pairs, latency_texts, batch_size),
        )
        self.process.start()
        child.close()

    def ready(self) -> dict[str, Any]:
        """Wait until the model is loaded and warm: its backend and labels."""
        return self._receive()

    def round(self, with_outputs: bool) -> tuple[list[float], float, np.ndarray | None]:
        self.conn.send(("round", with_outputs))
        return self._receive()

    def _receive(self) -> Any:
        try:
            kind, value = self.conn.recv()
        except EOFError:
            raise RuntimeError(
                f"the measuring process ended unexpectedly (exit code {self.process.exitcode})"
            ) from None
        if kind == "error":
            raise LmforgeError(value)
        if kind == "crash":
            raise RuntimeError(f"the measuring process failed:\n{value}")
        return value

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):  # it may have ended already
            self.conn.send(("stop", None))
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()


def _context() -> BaseContext:
    """A forkserver (where the platform has one): each worker forks from a process that has
    loaded torch and transformers but never run a thread pool, so it starts in a second, not
    the ~5 s of a fresh interpreter, and safely (forking a process whose OpenMP pool ran can
    hang)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["lmforge.export.worker"])
    return context


def _worker_main(
    conn: Connection,
    path: str,
    precision: str,
    texts: list[str],
    pairs: list[str] | None,
    latency_texts: int,
    batch_size: int,
) -> None:
    try:
        logging.getLogger("lmforge").setLevel(
            logging.ERROR
        )  # the parent reports; a failed export warns there
        predictor = Predictor.load(path, device="cpu", precision=precision)
        sample, sample_pairs = (
            texts[:latency_texts],
            pairs[:latency_texts] if pairs is not None else None,
        )

        def one(i: int) -> None:
            predictor.logits(
                [sample[i]], batch_size=1, pairs=[sample_pairs[i]] if sample_pairs else None
            )

        for i in range(min(8, len(sample))):  # warm-up: compiled graphs, thread pools, allocator
            one(i)
        predictor.logits(
            texts[:batch_size], batch_size=batch_size, pairs=pairs[:batch_size] if pairs else None
        )
        conn.send(("ready", {"backend": predictor.backend, "labels": predictor.label_names}))
        while True:
            command, with_outputs = conn.recv()
            if command == "stop":
                return
            latency = []
            for i in range(len(sample)):
                started = time.perf_counter()
                one(i)
                latency.append(1000 * (time.perf_counter() - started))
            started = time.perf_counter()
            outputs = predictor.logits(texts, batch_size=batch_size, pairs=pairs)
            throughput = len(texts) / (time.perf_counter() - started)
            conn.send(("result", (latency, throughput, outputs if with_outputs else None)))
    except LmforgeError as err:
        conn.send(("error", str(err)))
    except Exception:
        conn.send(("crash", traceback.format_exc()))
    finally:
        conn.close()
