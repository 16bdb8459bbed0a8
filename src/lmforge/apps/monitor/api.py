"""The monitor's HTTP API and dashboard, on the engine's serving guard.

Routes (all under the API key when keys are configured, like ``lmforge serve``):

- ``POST /v1/monitor/documents``: push documents; answered once they are stored.
- ``GET /v1/monitor/trends``, ``/alerts``, ``/documents``, ``/topics``, ``/sources``: what the
  store holds, as JSON (times in ISO 8601 UTC).
- ``POST /v1/monitor/alerts/{id}/acknowledge`` and ``/resolve``.
- ``GET /`` the dashboard (static files shipped in the package, no CDN), ``/healthz``,
  ``/readyz``, ``/metrics`` (Prometheus).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from lmforge.apps.monitor import queries
from lmforge.apps.monitor.config import MonitorConfig
from lmforge.apps.monitor.documents import Rejected, parse_timestamp
from lmforge.apps.monitor.jsonable import strict
from lmforge.apps.monitor.service import MonitorService, pushed_records, static_dir
from lmforge.apps.monitor.sinks import alert_json
from lmforge.errors import LmforgeError
from lmforge.serving.config import ServeSettings
from lmforge.serving.guard import (
    ApiError,
    Authorizer,
    check_binding,
    error_response,
    install_guard,
)
from lmforge.serving.security import ApiKeys
from lmforge.serving.telemetry import Metrics

log = logging.getLogger(__name__)


class PushRequest(BaseModel):
    """Documents with at least ``text`` and ``timestamp`` (and ``id``, ``title``, ``url``);
    a document that cannot be stored is quarantined with its reason, the others are stored."""

    model_config = ConfigDict(extra="forbid")
    documents: list[dict[str, Any]] = Field(min_length=1)


class PushResponse(BaseModel):
    stored: int
    duplicates: int
    quarantined: int
    fired: int
    resolved: int


def _moment(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        return parse_timestamp(value)
    except Rejected as err:
        raise ApiError(422, "invalid_request", f"{name}: {err}") from None


def create_monitor_app(
    service: MonitorService, settings: ServeSettings, metrics: Metrics | None = None
) -> FastAPI:
    """The service's app; ``metrics`` is the registry the monitor's metrics were made in."""
    metrics = metrics or Metrics()
    authorize = Authorizer(settings)
    cfg, engine = service.cfg, service.engine
    state = {"ready": False, "pushed": 0}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        state["ready"] = True
        yield
        state["ready"] = False
        await asyncio.to_thread(service.stop)

    app = FastAPI(
        title=f"lmforge monitor: {cfg.name}",
        lifespan=lifespan,
        description="Sentiment and topic monitoring. Send keys as `Authorization: Bearer KEY`.",
    )
    install_guard(app, settings, metrics)

    def window_of(window: str | None) -> str:
        window = window or cfg.windows[0]
        if window not in cfg.windows:
            raise ApiError(422, "invalid_request", f"window {window}: one of {cfg.windows}")
        return window

    @app.post("/v1/monitor/documents", response_model=PushResponse, tags=["monitor"])
    async def push(request: Request, body: PushRequest) -> PushResponse:
        authorize(request)
        if len(body.documents) > settings.max_texts:
            raise ApiError(
                422,
                "too_many_texts",
                f"{len(body.documents)} documents in one request; at most {settings.max_texts}",
            )
        records = pushed_records(body.documents, state["pushed"])
        state["pushed"] += len(records)
        try:
            done = await asyncio.to_thread(service.ingest, records)
        except LmforgeError as err:  # the store stayed unreachable through every retry
            raise ApiError(503, "unavailable", str(err), {"Retry-After": "30"}) from None
        return PushResponse(**done.__dict__)

    @app.get("/v1/monitor/trends", tags=["monitor"])
    async def trends(
        request: Request,
        window: str | None = None,
        topic: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> JSONResponse:
        authorize(request)
        size = window_of(window)
        rows = await asyncio.to_thread(
            queries.trends,
            engine,
            size,
            topic,
            _moment(since, "since"),
            _moment(until, "until"),
        )
        return JSONResponse({"window": size, "rows": [strict(r) for r in rows]})

    @app.get("/v1/monitor/alerts", tags=["monitor"])
    async def alerts(
        request: Request,
        topic: str | None = None,
        state: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> JSONResponse:
        authorize(request)
        rows = await asyncio.to_thread(
            queries.alerts, engine, topic, _moment(since, "since"), _moment(until, "until"), state
        )
        return JSONResponse({"alerts": [strict(r) for r in rows]})

    @app.post("/v1/monitor/alerts/{alert_id}/{action}", tags=["monitor"])
    async def act(request: Request, alert_id: int, action: str) -> JSONResponse:
        who = authorize(request)
        if action not in ("acknowledge", "resolve"):
            raise ApiError(404, "not_found", f"no action {action!r}: acknowledge or resolve")
        change = service.acknowledge if action == "acknowledge" else service.resolve
        try:
            alert = await asyncio.to_thread(change, alert_id, who)
        except KeyError:
            raise ApiError(404, "not_found", f"no alert {alert_id}") from None
        return JSONResponse({"alert": alert_json(alert)})

    @app.get("/v1/monitor/documents", tags=["monitor"])
    async def documents(
        request: Request,
        topic: str | None = None,
        source: str | None = None,
        sentiment: str | None = None,
        since: str | None = None,
        until: str | None = None,
        order: str = "newest",
        limit: int = 50,
    ) -> JSONResponse:
        authorize(request)
        if order not in ("newest", "negative"):
            raise ApiError(422, "invalid_request", "order: newest or negative")
        rows = await asyncio.to_thread(
            queries.documents,
            engine,
            topic,
            source,
            sentiment,
            _moment(since, "since"),
            _moment(until, "until"),
            max(1, min(limit, 500)),
            order,
        )
        return JSONResponse({"documents": [strict(r) for r in rows]})

    @app.get("/v1/monitor/topics", tags=["monitor"])
    async def topics(request: Request, window: str | None = None) -> JSONResponse:
        authorize(request)
        size = window_of(window)
        rows = await asyncio.to_thread(queries.topics, engine, size)
        return JSONResponse({"window": size, "windows": cfg.windows, "topics": rows})

    @app.get("/v1/monitor/sources", tags=["monitor"])
    async def sources(request: Request) -> JSONResponse:
        authorize(request)
        rows = await asyncio.to_thread(queries.sources, engine)
        return JSONResponse({"sources": [strict(r) for r in rows]})

    @app.get("/", include_in_schema=False)
    async def dashboard() -> Response:
        page = static_dir() / "index.html"
        if not page.is_file():
            return error_response(404, "not_found", "the dashboard is not installed")
        return FileResponse(page, media_type="text/html")

    if static_dir().is_dir():
        app.mount("/static", StaticFiles(directory=static_dir()), name="static")

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    async def readyz() -> Response:
        if not state["ready"]:
            return error_response(503, "not_ready", "starting or shutting down")
        return JSONResponse({"status": "ready", "monitor": cfg.name})

    @app.get("/metrics", tags=["operations"])
    async def prometheus() -> Response:
        await asyncio.to_thread(service.refresh_gauges)
        content, media_type = metrics.render()
        return Response(content, media_type=media_type)

    return app


def run_service(cfg: MonitorConfig, keys: ApiKeys) -> None:
    """``lmforge monitor run``: load the models, open the store, serve until SIGTERM/Ctrl-C
    (then the pollers stop and in-flight requests finish)."""
    import uvicorn

    from lmforge.apps.monitor.build import resolve_models
    from lmforge.apps.monitor.classify import Classifier
    from lmforge.apps.monitor.pipeline import Pipeline
    from lmforge.apps.monitor.service import MonitorMetrics
    from lmforge.apps.monitor.sinks import alert_sinks
    from lmforge.apps.monitor.store import open_store
    from lmforge.apps.monitor.windows import parse_duration

    settings = cfg.service.model_copy(update={"keys": keys})
    check_binding(cfg.service.host, settings, cfg.service.allow_open)
    if not keys:
        log.warning("no API keys: the monitor is open to every caller on %s", cfg.service.host)
    immediate, outbox = alert_sinks(cfg)
    classifier = Classifier(resolve_models(cfg), cfg.device, cfg.precision, cfg.forward_batch_size)
    engine = open_store(cfg.store_url())
    pipeline = Pipeline(
        cfg, engine, classifier, immediate, outbox, clock=lambda: datetime.now(timezone.utc)
    )
    metrics = Metrics()
    poll = parse_duration(cfg.service.poll_interval).total_seconds()
    service = MonitorService(cfg, engine, pipeline, MonitorMetrics(metrics.registry), poll)
    app = create_monitor_app(service, settings, metrics)
    log.info(
        "monitor %s on http://%s:%d (dashboard: /, API docs: /docs, metrics: /metrics)",
        cfg.name,
        cfg.service.host,
        cfg.service.port,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=cfg.service.host, port=cfg.service.port, log_level="info", access_log=False
        )
    )
    server.run()
