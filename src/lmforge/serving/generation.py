"""Generation over HTTP: one request at a time per model, answered whole or streamed as
server-sent events.

The three generation endpoints (lmforge's ``/v1/generate`` and OpenAI's ``/v1/completions``
and ``/v1/chat/completions``) differ only in their bodies; each becomes a
:class:`GenerationJob` (prompts, options, chat or not), which :class:`GenerationRunner` runs
on the model's worker thread through :func:`lmforge.generation.generate.complete`, the same
code as ``lmforge generate``. Streaming hands the worker a file-like writer that moves each
settled piece of text onto the event loop; a client that goes away cancels its generation at
the next token.

Why one request at a time, not micro-batched like the encoders: requests differ in sampling
settings and lengths, and batching them well takes continuous batching with a paged KV cache
(vLLM, TGI). An exported lmforge model is a plain Hugging Face directory, which vLLM serves as
it is, when generation throughput matters more than one service for every task.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from lmforge.errors import LmforgeError
from lmforge.generation.generate import (
    Completion,
    GenerationOptions,
    Prompt,
    check_stop_strings,
    complete,
    encode_prompts,
)
from lmforge.serving.batching import QueueFull

if TYPE_CHECKING:
    from lmforge.inference.predictor import Predictor
    from lmforge.serving.protocol import OpenAIFields

log = logging.getLogger(__name__)


class GenerationCancelled(Exception):
    """The client of a stream went away: stop generating."""


@dataclass
class GenerationJob:
    prompts: list[Prompt]
    options: GenerationOptions
    chat: bool = False


class GenerationRunner:
    """Runs a model's generations one at a time in a worker thread; at most ``max_queue`` wait.

    A slot is reserved when the request is accepted (:meth:`reserve`, 503 beyond the bound),
    before a stream's headers go out, so an overloaded server answers 503 and never a stream
    that fails.
    """

    def __init__(self, predictor: Predictor, max_queue: int = 64, batch_size: int = 8):
        self.predictor = predictor
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.waiting = 0  # accepted requests not yet answered, the running one included
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmforge-generate")
        self._seconds_per_request = 1.0  # running estimate, for Retry-After

    def check(self, job: GenerationJob) -> None:
        """Raise the request's error (no chat template, prompt too long) before anything runs."""
        predictor = self.predictor
        if job.chat and not getattr(predictor.tokenizer, "chat_template", None):
            raise LmforgeError(
                "this model has no chat template (it was not fine-tuned for chat): send a prompt "
                "to /v1/completions or /v1/generate, or fine-tune it with task: chat"
            )
        encode_prompts(
            predictor.model, predictor.tokenizer, job.prompts, job.options.max_new_tokens, job.chat
        )
        check_stop_strings(predictor.tokenizer, job.options.stop)

    def reserve(self) -> None:
        if self.waiting >= self.max_queue:
            raise QueueFull(retry_after=max(1.0, self.waiting * self._seconds_per_request))
        self.waiting += 1

    async def run(self, job: GenerationJob, stream: TextIO | None = None) -> list[Completion]:
        """Generate for a reserved job (``stream``: a writer for the text of a one-prompt job)."""
        started = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.executor, self._generate, job, stream
            )
        finally:
            self.waiting -= 1
            self._seconds_per_request = 0.8 * self._seconds_per_request + 0.2 * (
                time.perf_counter() - started
            )

    def _generate(self, job: GenerationJob, stream: TextIO | None) -> list[Completion]:
        predictor = self.predictor  # read once: a hot reload may swap it while this runs
        return complete(
            predictor.model,
            predictor.tokenizer,
            job.prompts,
            job.options,
            batch_size=self.batch_size,
            stream=stream,
            chat=job.chat,
        )

    async def stop(self) -> None:
        """Finish what was accepted, then stop (graceful shutdown)."""
        while self.waiting:
            await asyncio.sleep(0.01)
        self.executor.shutdown(wait=True)


class _LoopWriter:
    """A file-like object for the worker thread: each write lands on an asyncio queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
        self.loop, self.queue, self.cancelled = loop, queue, False

    def write(self, text: str) -> int:
        if self.cancelled:
            raise GenerationCancelled
        self.loop.call_soon_threadsafe(self.queue.put_nowait, text)
        return len(text)

    def flush(self) -> None:
        pass


_END = object()


async def stream_text(
    runner: GenerationRunner, job: GenerationJob, on_first: Callable[[], None] | None = None
) -> AsyncIterator[str | list[Completion]]:
    """The pieces of text of a reserved one-prompt job as they are generated, then its
    completions."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    writer = _LoopWriter(loop, queue)
    task = asyncio.ensure_future(runner.run(job, writer))

    def finished(done: asyncio.Future) -> None:
        # the task ends after the writes it made were queued, so _END comes last
        queue.put_nowait(_END)
        if not done.cancelled():
            done.exception()  # retrieved: a stream the client closed ends in GenerationCancelled

    task.add_done_callback(finished)
    first = True
    try:
        while (piece := await queue.get()) is not _END:
            if first and on_first is not None:
                on_first()
            first = False
            yield piece
        yield task.result()
    finally:
        writer.cancelled = True  # a closed stream (client gone) stops the worker at its next token


def sse(payload: dict[str, Any] | str) -> str:
    """One server-sent event."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


def usage(completions: list[Completion]) -> dict[str, int]:
    prompt = sum(c.prompt_tokens for c in completions)
    generated = sum(c.completion_tokens for c in completions)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": generated,
        "total_tokens": prompt + generated,
    }


def completion_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def openai_options(body: OpenAIFields, max_new_tokens: int) -> GenerationOptions:
    """An OpenAI body's settings as lmforge's (temperature 0: greedy)."""
    greedy = body.temperature == 0
    return GenerationOptions(
        max_new_tokens=max_new_tokens,
        temperature=1.0 if greedy else body.temperature,
        top_p=body.top_p if body.top_p < 1 else None,
        top_k=body.top_k,
        repetition_penalty=body.repetition_penalty,
        greedy=greedy,
        stop=body.stop_strings(),
        seed=body.seed,
    )


# --- the three answer shapes ----------------------------------------------------------------------


class AnswerShape:
    """How one endpoint words a generation: whole, or as stream events (lmforge's own shape)."""

    def __init__(self, model: str, include_usage: bool = False):
        self.model, self.include_usage = model, include_usage
        self.id, self.created = completion_id(self.prefix), int(time.time())

    prefix = "gen"

    def whole(self, completions: list[Completion]) -> dict[str, Any]:
        return {
            "model": self.model,
            "usage": usage(completions),
            "results": [
                {
                    "text": c.text,
                    "finish_reason": c.finish_reason,
                    "prompt_tokens": c.prompt_tokens,
                    "completion_tokens": c.completion_tokens,
                }
                for c in completions
            ],
        }

    def opening(self) -> list[dict[str, Any]]:
        return []

    def piece(self, text: str) -> dict[str, Any]:
        return {"text": text}

    def closing(self, completions: list[Completion]) -> list[dict[str, Any]]:
        return [{"finish_reason": completions[0].finish_reason, "usage": usage(completions)}]


class CompletionShape(AnswerShape):
    """OpenAI's text completions: ``choices[].text``; chunks of object ``text_completion``."""

    prefix = "cmpl"
    chunk_object = "text_completion"

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.chunk_object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def whole(self, completions: list[Completion]) -> dict[str, Any]:
        return self._chunk(
            [
                {"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
                for i, c in enumerate(completions)
            ],
            usage=usage(completions),
        )

    def piece(self, text: str) -> dict[str, Any]:
        return self._chunk([{"index": 0, "text": text, "finish_reason": None, "logprobs": None}])

    def closing(self, completions: list[Completion]) -> list[dict[str, Any]]:
        events = [
            self._chunk(
                [
                    {
                        "index": 0,
                        "text": "",
                        "finish_reason": completions[0].finish_reason,
                        "logprobs": None,
                    }
                ]
            )
        ]
        if (
            self.include_usage
        ):  # OpenAI's stream_options.include_usage: a last chunk without choices
            events.append(self._chunk([], usage=usage(completions)))
        return events


class ChatShape(CompletionShape):
    """OpenAI's chat completions: ``choices[].message``; chunks of ``chat.completion.chunk`` with
    deltas."""

    prefix = "chatcmpl"
    chunk_object = "chat.completion.chunk"

    def whole(self, completions: list[Completion]) -> dict[str, Any]:
        c = completions[0]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": c.text},
                    "finish_reason": c.finish_reason,
                }
            ],
            "usage": usage(completions),
        }

    def opening(self) -> list[dict[str, Any]]:
        return [
            self._chunk(
                [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
            )
        ]

    def piece(self, text: str) -> dict[str, Any]:
        return self._chunk([{"index": 0, "delta": {"content": text}, "finish_reason": None}])

    def closing(self, completions: list[Completion]) -> list[dict[str, Any]]:
        events = [
            self._chunk([{"index": 0, "delta": {}, "finish_reason": completions[0].finish_reason}])
        ]
        if self.include_usage:
            events.append(self._chunk([], usage=usage(completions)))
        return events


async def sse_answer(
    runner: GenerationRunner,
    job: GenerationJob,
    shape: AnswerShape,
    on_first: Callable[[], None] | None = None,
    on_done: Callable[[list[Completion]], None] | None = None,
) -> AsyncIterator[str]:
    """A reserved job's answer as server-sent events, ending with ``data: [DONE]``."""
    for event in shape.opening():
        yield sse(event)
    try:
        async for item in stream_text(runner, job, on_first):
            if isinstance(item, str):
                yield sse(shape.piece(item))
            else:
                if on_done is not None:
                    on_done(item)
                for event in shape.closing(item):
                    yield sse(event)
    except GenerationCancelled:
        return
    except Exception as err:  # the headers are out: the error becomes the stream's last event
        log.exception("generation failed")
        yield sse(
            {"error": {"type": "generation_failed", "message": str(err) or type(err).__name__}}
        )
    yield sse("[DONE]")
