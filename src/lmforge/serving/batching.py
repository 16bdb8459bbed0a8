"""Dynamic micro-batching: concurrent requests share forward passes, the event loop never waits
on a model.

Each model has one :class:`MicroBatcher`. A request puts its texts on the batcher's queue and
awaits a future. The batcher's loop takes the first waiting request, then keeps taking
requests until the batch holds ``max_batch_size`` texts or ``max_wait_ms`` have passed since
the first, and runs the whole batch in a worker thread (``Predictor`` sorts it by length, so
little padding). Each caller gets its own rows back. With ``concurrency`` above 1, several
batches run at once in as many threads (on a CPU, small models use cores better as concurrent
single-threaded batches than as one batch over all cores).

Why by hand: inference servers batch this way (vLLM, Triton's dynamic batcher, Ray Serve's
``@serve.batch``), but none of those is a library call for a FastAPI app on one machine;
the loop is ~60 lines, and it is where the queue bound (503 instead of unbounded memory) and
the batch-size and queue-depth metrics live.

PyTorch releases the GIL inside its kernels, so the event loop keeps accepting, validating
and answering requests while a batch runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Row = TypeVar("Row")  # what the model call returns per text (a prediction, an embedding)


class QueueFull(Exception):
    """More texts are waiting than the queue may hold: answer 503 with Retry-After."""

    def __init__(self, retry_after: float):
        super().__init__(f"the queue is full; retry after {retry_after:.0f} s")
        self.retry_after = retry_after


@dataclass
class _Pending:
    texts: list[str]
    pairs: list[str] | None
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher(Generic[Row]):
    """Gathers concurrent requests into batches for ``run(texts, pairs) -> rows``.

    Args:
        run: The model call for one batch (``Predictor.predict``); runs in a worker thread.
        max_batch_size: Texts per model call at most (the call may split them into forward passes).
        max_wait_ms: How long the first request of a batch waits for company.
        max_queue: Texts that may wait at most; beyond, :meth:`submit` raises :class:`QueueFull`.
        on_batch: Called with (batch size, seconds the batch took) after each batch (metrics).
        concurrency: Batches that may run at once, each in its own worker thread (CPU: see
            ``recipe.model_threads``); the next batch is gathered when one of them is free, so
            requests keep merging while the others run.
    """

    def __init__(
        self,
        run: Callable[[list[str], list[str] | None], list[Row]],
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 1024,
        on_batch: Callable[[int, float], None] | None = None,
        concurrency: int = 1,
    ):
        self.run = run
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.waiting = 0  # texts queued, not yet in a batch
        self.executor = ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="lmforge-model"
        )
        self._slots = asyncio.Semaphore(concurrency)
        self._running: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None
        self._seconds_per_text = 0.01  # running estimate, for Retry-After

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Finish what is queued, then stop (graceful shutdown)."""
        while self.waiting or self._running:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.executor.shutdown(wait=True)

    async def submit(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[Row]:
        """The rows for ``texts``, computed in a batch with whatever else is waiting."""
        if self.waiting + len(texts) > self.max_queue:
            raise QueueFull(retry_after=max(1.0, self.waiting * self._seconds_per_text))
        future = asyncio.get_running_loop().create_future()
        self.waiting += len(texts)
        await self.queue.put(
            _Pending(list(texts), list(pairs) if pairs is not None else None, future)
        )
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()  # a worker thread is free
            batch = [await self.queue.get()]
            size = len(batch[0].texts)
            deadline = batch[0].queued_at + self.max_wait
            while size < self.max_batch_size:
                item = await self._next(deadline)
                if item is None:
                    break
                batch.append(item)
                size += len(item.texts)
            self.waiting -= size
            task = loop.create_task(self._run_batch(loop, batch, size))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        self._slots.release()

    async def _next(self, deadline: float) -> _Pending | None:
        """A request already waiting, else one that comes before ``deadline``, else None.

        What is already queued is taken without waiting: under load the first request of a
        batch queued during the previous one, its deadline is past, and ``wait_for(get(), 0)``
        gives up before a ready item is handed over, which made every batch one request.
        """
        with contextlib.suppress(asyncio.QueueEmpty):
            return self.queue.get_nowait()
        timeout = deadline - time.perf_counter()
        if timeout <= 0:
            return None
        try:
            return await asyncio.wait_for(self.queue.get(), timeout=timeout)
        except asyncio.TimeoutError:  # (TimeoutError itself from Python 3.11)
            return None

    async def _run_batch(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Pending], size: int
    ) -> None:
        texts = [t for item in batch for t in item.texts]
        with_pairs = [item for item in batch if item.pairs is not None]
        pairs = (
            [p for item in batch for p in (item.pairs or [""] * len(item.texts))]
            if with_pairs
            else None
        )
        started = time.perf_counter()
        try:
            rows = await loop.run_in_executor(self.executor, self.run, texts, pairs)
        except Exception as err:  # every caller of this batch gets the error
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(err)
            return
        seconds = time.perf_counter() - started
        self._seconds_per_text = 0.8 * self._seconds_per_text + 0.2 * seconds / max(size, 1)
        if self.on_batch is not None:
            self.on_batch(size, seconds)
        start = 0
        for item in batch:
            if not item.future.done():  # the caller may have gone (client disconnect)
                item.future.set_result(rows[start : start + len(item.texts)])
            start += len(item.texts)
