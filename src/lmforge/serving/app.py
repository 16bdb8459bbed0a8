"""The FastAPI application: thin routes over per-model micro-batchers, behind keys and limits.

One endpoint per task (classify, score, tag, embed); each route checks who is calling and how
often, validates the body (pydantic; limits on texts and characters), hands the texts to the
model's :class:`~lmforge.serving.batching.MicroBatcher`, and shapes the answer. Errors are
JSON ``{"error": {"type", "message"}}`` with the right status: 401 (no or wrong key), 404
(unknown model), 413 (body too large), 422 (malformed or out of limits), 429 (rate limit),
503 (queue full or shutting down, with ``Retry-After``); a 500 is a bug and is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from lmforge.errors import LmforgeError
from lmforge.generation.generate import GenerationOptions
from lmforge.serving.batching import MicroBatcher, QueueFull
from lmforge.serving.config import ServeSettings
from lmforge.serving.generation import (
    AnswerShape,
    ChatShape,
    CompletionShape,
    GenerationJob,
    GenerationRunner,
    openai_options,
    sse_answer,
)
from lmforge.serving.guard import ApiError, Authorizer, error_response, install_guard
from lmforge.serving.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ClassifyResponse,
    CompletionRequest,
    CompletionResponse,
    EmbedResponse,
    GenerateRequest,
    GenerateResponse,
    ModelCard,
    ModelList,
    ScoreResponse,
    TagResponse,
    TextsRequest,
)
from lmforge.serving.reload import ModelWatcher, reload_model
from lmforge.serving.security import mask_pii
from lmforge.serving.telemetry import Metrics

log = logging.getLogger(__name__)

# A gathered batch runs as length-sorted forward passes of this many texts on a CPU: less padding
# beats a bigger matrix there. MiniLM on FPB, 2 cores, bf16: 32 texts as 4 passes of 8 take 6.4
# ms/text, as one pass of 32 7.7 ms/text (16 as 2 x 8: 5.7, as 1 x 16: 7.0). A GPU takes the whole
# batch.
CPU_FORWARD_BATCH = 8
SSE_RESPONSE = {
    200: {
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
        "description": "With `stream: true`: server-sent events (`data: {...}`), ending with "
        "`data: [DONE]`.",
    }
}


@dataclass
class ServedModel:
    """A loaded model under its name."""

    name: str
    predictor: Any  # lmforge.inference.predictor.Predictor
    path: str
    batcher: MicroBatcher | None = None  # encoders: micro-batched
    generator: GenerationRunner | None = None  # generative models: one request at a time
    created: int = field(default_factory=lambda: int(time.time()))
    precision: str = "auto"  # what it was loaded with (a hot reload loads the same way)
    fingerprint: tuple = ()  # its files when last loaded (serving.reload)
    reloads: int = 0

    @property
    def task(self) -> str:
        return self.predictor.task.name

    @property
    def generative(self) -> bool:
        return self.predictor.task.generative

    @property
    def endpoint(self) -> str | None:
        """The endpoint that answers for it (``/v1/<endpoint>``): the task says."""
        return self.predictor.task.endpoint

    @property
    def backend(self) -> str:
        return self.predictor.backend

    def card(self) -> ModelCard:
        generative = self.generative
        return ModelCard(
            id=self.name,
            task=self.task,
            backend=self.backend,
            created=self.created,
            reloads=self.reloads,
            labels=[] if generative else list(self.predictor.label_names),
            endpoint=f"/v1/{self.endpoint or ''}",
        )


def create_app(models: dict[str, ServedModel], settings: ServeSettings | None = None) -> FastAPI:
    """The service for ``models`` (name -> loaded model)."""
    settings = settings or ServeSettings()
    metrics = Metrics()
    state = {"ready": False}
    watcher = ModelWatcher(models, settings.reload_interval, on_reload=_reload_metrics(metrics))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for served in models.values():
            if served.generative:
                served.generator = GenerationRunner(served.predictor, settings.max_generation_queue)
                continue
            on_cpu = getattr(served.predictor, "device", "cpu") == "cpu"
            served.batcher = MicroBatcher(
                _runner(served, settings),
                settings.max_batch_size,
                settings.max_wait_ms,
                settings.max_queue,
                on_batch=_batch_metrics(metrics, served.name),
                concurrency=(settings.model_threads or 1) if on_cpu else 1,
            )
            served.batcher.start()
        if settings.reload_interval > 0:
            watcher.start()
        state["ready"] = True
        yield
        state["ready"] = False  # /readyz answers 503 while in-flight requests finish
        await watcher.stop()
        for served in models.values():
            await (served.generator or served.batcher).stop()

    app = FastAPI(
        title="lmforge",
        version=_version(),
        lifespan=lifespan,
        description="Models trained or exported by lmforge, behind one API. Send keys as "
        "`Authorization: Bearer KEY`.",
    )
    app.state.metrics, app.state.models, app.state.settings = metrics, models, settings
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
        )

    install_guard(app, settings, metrics)
    authorize = Authorizer(settings)

    def pick(request: Request, body: Any, endpoint: str) -> ServedModel:
        name = body.model or (next(iter(models)) if len(models) == 1 else None)
        if name is None:
            raise ApiError(
                422,
                "model_required",
                f"several models are served: give 'model', one of {sorted(models)}",
            )
        if name not in models:
            raise ApiError(404, "model_not_found", f"no model '{name}'; served: {sorted(models)}")
        served = models[name]
        request.state.model = name
        if served.endpoint != endpoint:
            right = served.endpoint
            raise ApiError(
                422,
                "wrong_endpoint",
                f"model '{name}' is a {served.task.replace('_', ' ')} model: "
                + (f"use POST /v1/{right}" if right else "it has no endpoint yet"),
            )
        return served

    async def answer(request: Request, body: TextsRequest, endpoint: str) -> tuple[str, list[Any]]:
        authorize(request)
        served = pick(request, body, endpoint)
        texts, pairs = body.inputs()
        check_limits(texts, pairs, settings)
        if served.predictor.pairs != (
            pairs is not None
        ):  # a dropped second text would be a silent wrong answer
            raise ApiError(
                422,
                "pair_mismatch",
                f"model '{served.name}' scores "
                + (
                    "text pairs: give text_pair(s) too"
                    if served.predictor.pairs
                    else "single texts: remove text_pair(s)"
                ),
            )
        if settings.mask_inputs:
            texts = [mask_pii(t) for t in texts]
            pairs = [mask_pii(t) for t in pairs] if pairs is not None else None
        metrics.queue_depth.labels(served.name).set(served.batcher.waiting + len(texts))
        try:
            rows = await served.batcher.submit(texts, pairs)
        except QueueFull as full:
            raise ApiError(
                503, "overloaded", str(full), {"Retry-After": str(round(full.retry_after))}
            ) from None
        except LmforgeError as err:
            raise ApiError(422, "invalid_input", str(err)) from None
        finally:
            metrics.queue_depth.labels(served.name).set(served.batcher.waiting)
        metrics.texts.labels(served.name).inc(len(texts))
        return served.name, rows

    @app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        response_model_exclude_none=True,
        tags=["tasks"],
        summary="Labels and probabilities (single- and multi-label classifiers)",
    )
    async def classify(request: Request, body: TextsRequest) -> ClassifyResponse:
        name, rows = await answer(request, body, "classify")
        return ClassifyResponse(model=name, results=rows)

    @app.post(
        "/v1/score",
        response_model=ScoreResponse,
        tags=["tasks"],
        summary="A number per text (regressors)",
    )
    async def score(request: Request, body: TextsRequest) -> ScoreResponse:
        name, rows = await answer(request, body, "score")
        return ScoreResponse(model=name, results=rows)

    @app.post(
        "/v1/tag",
        response_model=TagResponse,
        tags=["tasks"],
        summary="Entities with character offsets (token classifiers)",
    )
    async def tag(request: Request, body: TextsRequest) -> TagResponse:
        name, rows = await answer(request, body, "tag")
        return TagResponse(model=name, results=rows)

    @app.post(
        "/v1/embed",
        response_model=EmbedResponse,
        tags=["tasks"],
        summary="Unit-length sentence vectors",
    )
    async def embed(request: Request, body: TextsRequest) -> EmbedResponse:
        name, rows = await answer(request, body, "embed")
        return EmbedResponse(
            model=name, dimensions=len(rows[0]["embedding"]) if rows else 0, results=rows
        )

    def check_generation(prompts: list[Any], max_new_tokens: int) -> None:
        texts = [
            t for p in prompts for t in ([p] if isinstance(p, str) else [m["content"] for m in p])
        ]
        if len(prompts) > settings.max_texts:
            raise ApiError(
                422,
                "too_many_texts",
                f"{len(prompts)} prompts in one request; at most {settings.max_texts}",
            )
        longest = max((len(t) for t in texts), default=0)
        if longest > settings.max_chars:
            raise ApiError(
                422,
                "text_too_long",
                f"a text of {longest} characters; at most {settings.max_chars}",
            )
        if max_new_tokens > settings.max_new_tokens:
            raise ApiError(
                422,
                "too_many_tokens",
                f"{max_new_tokens} new tokens asked; at most "
                f"{settings.max_new_tokens} (--max-new-tokens)",
            )

    async def generation(
        request: Request, body: Any, job: GenerationJob, shape: AnswerShape
    ) -> Any:
        """Run ``job`` and answer in ``shape``: whole, or streamed when the body asks for it."""
        served = models[shape.model]
        runner = served.generator
        if body.stream and len(job.prompts) != 1:
            raise ApiError(
                422, "invalid_request", "stream takes one prompt; send several without stream"
            )
        if settings.mask_inputs:
            job.prompts = [
                mask_pii(p)
                if isinstance(p, str)
                else [{**m, "content": mask_pii(m["content"])} for m in p]
                for p in job.prompts
            ]
        try:
            runner.check(job)
            runner.reserve()
        except LmforgeError as err:
            raise ApiError(422, "invalid_input", str(err)) from None
        except QueueFull as full:
            raise ApiError(
                503, "overloaded", str(full), {"Retry-After": str(round(full.retry_after))}
            ) from None
        metrics.queue_depth.labels(served.name).set(runner.waiting)

        def done(completions: list[Any]) -> None:
            metrics.prompt_tokens.labels(served.name).inc(sum(c.prompt_tokens for c in completions))
            metrics.generated_tokens.labels(served.name).inc(
                sum(c.completion_tokens for c in completions)
            )
            metrics.queue_depth.labels(served.name).set(runner.waiting)

        if body.stream:
            started = time.perf_counter()

            def first() -> None:
                metrics.time_to_first_token.labels(served.name).observe(
                    time.perf_counter() - started
                )

            return StreamingResponse(
                sse_answer(runner, job, shape, on_first=first, on_done=done),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        try:
            completions = await runner.run(job)
        except LmforgeError as err:
            raise ApiError(422, "invalid_input", str(err)) from None
        done(completions)
        return shape.whole(completions)

    @app.post(
        "/v1/generate",
        response_model=GenerateResponse,
        tags=["generation"],
        responses=SSE_RESPONSE,
        summary="Continue prompts or answer a conversation (causal language models)",
    )
    async def generate(request: Request, body: GenerateRequest) -> Any:
        authorize(request)
        served = pick(request, body, "generate")
        if body.messages is not None:
            prompts: list[Any] = [[{"role": m.role, "content": m.text()} for m in body.messages]]
        else:
            prompts = [body.prompt] if body.prompt is not None else list(body.prompts or [])
        if not prompts:
            raise ApiError(422, "invalid_request", "'prompts' is empty")
        check_generation(prompts, body.max_new_tokens)
        options = generation_options(
            lambda: GenerationOptions(
                max_new_tokens=body.max_new_tokens,
                temperature=body.temperature or 1.0,
                greedy=body.temperature == 0,
                top_p=body.top_p,
                top_k=body.top_k,
                repetition_penalty=body.repetition_penalty,
                stop=body.stop_strings(),
                seed=body.seed,
            )
        )
        job = GenerationJob(prompts, options, chat=body.messages is not None)
        return await generation(request, body, job, AnswerShape(served.name))

    @app.post(
        "/v1/completions",
        response_model=CompletionResponse,
        response_model_exclude_none=True,
        tags=["openai"],
        responses=SSE_RESPONSE,
        summary="OpenAI-compatible text completions",
    )
    async def completions(request: Request, body: CompletionRequest) -> Any:
        authorize(request)
        served = pick(request, body, "generate")
        prompts: list[Any] = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts:
            raise ApiError(422, "invalid_request", "'prompt' is empty")
        check_generation(prompts, body.max_tokens)
        options = generation_options(lambda: openai_options(body, body.max_tokens))
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await generation(
            request,
            body,
            GenerationJob(prompts, options),
            CompletionShape(served.name, include_usage),
        )

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletionResponse,
        tags=["openai"],
        responses=SSE_RESPONSE,
        summary="OpenAI-compatible chat completions",
    )
    async def chat_completions(request: Request, body: ChatCompletionRequest) -> Any:
        authorize(request)
        served = pick(request, body, "generate")
        conversation = [{"role": m.role, "content": m.text()} for m in body.messages]
        max_new_tokens = (
            body.max_completion_tokens or body.max_tokens or min(128, settings.max_new_tokens)
        )
        check_generation([conversation], max_new_tokens)
        options = generation_options(lambda: openai_options(body, max_new_tokens))
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await generation(
            request,
            body,
            GenerationJob([conversation], options, chat=True),
            ChatShape(served.name, include_usage),
        )

    @app.get("/v1/models", response_model=ModelList, tags=["models"], summary="The served models")
    async def list_models(request: Request) -> ModelList:
        authorize(request)
        return ModelList(data=[served.card() for served in models.values()])

    @app.post(
        "/v1/models/{name}/reload",
        response_model=ModelCard,
        tags=["models"],
        summary="Load a model's directory again (new weights), swapping it in between batches",
    )
    async def reload(request: Request, name: str) -> ModelCard:
        authorize(request)
        if name not in models:
            raise ApiError(404, "model_not_found", f"no model '{name}'; served: {sorted(models)}")
        request.state.model = name
        try:
            await asyncio.to_thread(reload_model, models[name])
        except Exception as err:  # noqa: BLE001 - the old model keeps serving; the caller learns why
            metrics.reloads.labels(name, "failed").inc()
            raise ApiError(422, "reload_failed", f"{err}; the old model keeps serving") from None
        metrics.reloads.labels(name, "ok").inc()
        log.info("model %s: reloaded from %s", name, models[name].path)
        return models[name].card()

    @app.get("/healthz", tags=["operations"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Models loaded and accepting requests")
    async def readyz() -> Response:
        if not state["ready"]:
            return error_response(
                503, "not_ready", "starting or shutting down", {"Retry-After": "1"}
            )
        return JSONResponse({"status": "ready", "models": sorted(models)})

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    async def prometheus() -> Response:
        content, media_type = metrics.render()
        return Response(content, media_type=media_type)

    return app


def check_limits(texts: list[str], pairs: list[str] | None, settings: ServeSettings) -> None:
    """422 for requests within the body limit but beyond what one request may ask."""
    if not texts:
        raise ApiError(422, "invalid_request", "'texts' is empty")
    if len(texts) > settings.max_texts:
        raise ApiError(
            422,
            "too_many_texts",
            f"{len(texts)} texts in one request; at most {settings.max_texts}",
        )
    longest = max(len(t) for t in [*texts, *(pairs or [])])
    if longest > settings.max_chars:
        raise ApiError(
            422, "text_too_long", f"a text of {longest} characters; at most {settings.max_chars}"
        )


def generation_options(build: Any) -> GenerationOptions:
    """The request's generation options; a rule they break is a 422."""
    try:
        return build()
    except LmforgeError as err:
        raise ApiError(422, "invalid_request", str(err)) from None


def _runner(served: ServedModel, settings: ServeSettings) -> Any:
    own = threading.local()

    def run(texts: list[str], pairs: list[str] | None) -> list[Any]:
        predictor = (
            _thread_copy(own, served.predictor)
            if (settings.model_threads or 1) > 1
            else served.predictor
        )
        size = settings.forward_batch_size or (
            CPU_FORWARD_BATCH if getattr(predictor, "device", "cpu") == "cpu" else len(texts)
        )
        return predictor.predict(texts, batch_size=size, pairs=pairs)

    return run


def _thread_copy(own: threading.local, predictor: Any) -> Any:
    """This worker thread's view of ``predictor``: the same model, its own tokenizer (a fast
    tokenizer's settings are mutated by each call, which two threads must not do at once)."""
    if getattr(own, "source", None) is not predictor:  # first call, or a hot reload swapped it
        own.source, own.copy = predictor, copy.copy(predictor)
        own.copy.tokenizer = copy.deepcopy(predictor.tokenizer)
    return own.copy


def _batch_metrics(metrics: Metrics, name: str) -> Any:
    def observe(size: int, seconds: float) -> None:
        metrics.batch_size.labels(name).observe(size)
        metrics.batch_latency.labels(name).observe(seconds)

    return observe


def _reload_metrics(metrics: Metrics) -> Any:
    def count(name: str, result: str) -> None:
        metrics.reloads.labels(name, result).inc()

    return count


def _version() -> str:
    from lmforge import __version__

    return __version__
