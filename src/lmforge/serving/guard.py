"""What every lmforge service puts in front of its routes: request ids, the body-size limit, the
access log and request metrics (:func:`install_guard`), API keys and rate limits
(:class:`Authorizer`), and JSON errors (:class:`ApiError`).

``lmforge serve`` and the applications' services (``lmforge monitor run``) install the same
guard, so keys, limits, logs and metrics behave alike everywhere.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from lmforge.errors import LmforgeError
from lmforge.serving.config import ServeSettings
from lmforge.serving.security import RateLimiter
from lmforge.serving.telemetry import Metrics, log_access, new_request_id


class ApiError(Exception):
    """An answer other than 200, as JSON ``{"error": {"type", "message"}}``."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers or {}


def error_response(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"type": kind, "message": message}}, status_code=status, headers=headers
    )


async def body_within(request: Request, limit: int) -> bool:
    """Whether the body is at most ``limit`` bytes: by its Content-Length, or, for a chunked body,
    by reading it up to the limit and no further (an unbounded body never sits in memory)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        return declared.isdigit() and int(declared) <= limit
    if request.method != "POST":
        return True
    size, chunks = 0, []
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return False
        chunks.append(chunk)
    request._body = b"".join(
        chunks
    )  # Starlette's middleware replays a read body to the route from here
    return True


def install_guard(app: FastAPI, settings: ServeSettings, metrics: Metrics) -> None:
    """The middleware and error handlers of every route of ``app``; requests to ``/v1/...``
    are counted in ``metrics``."""

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        """Request ids, the body-size limit, the access log and the request metrics, for every
        route."""
        started = time.perf_counter()
        request.state.request_id = new_request_id(request.headers.get("x-request-id"))
        request.state.caller, request.state.model = None, None
        if not await body_within(request, settings.max_body_bytes):
            response = error_response(
                413, "body_too_large", f"the body is over {settings.max_body_bytes} bytes"
            )
        else:
            response = await call_next(request)
        response.headers["X-Request-ID"] = request.state.request_id
        endpoint = request.url.path
        if endpoint.startswith("/v1/"):
            model = request.state.model or "-"
            metrics.requests.labels(endpoint, model, str(response.status_code)).inc()
            metrics.latency.labels(endpoint, model).observe(time.perf_counter() - started)
            if response.status_code >= 400:
                metrics.errors.labels(str(response.status_code)).inc()
        log_access(
            request.state.request_id,
            request.method,
            endpoint,
            response.status_code,
            started,
            caller=request.state.caller,
            model=request.state.model,
        )
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return error_response(err.status, err.kind, err.message, err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}"
            for e in err.errors()[:5]
        )
        return error_response(
            422, "invalid_request", problems or "the body is not valid JSON for this endpoint"
        )


class Authorizer:
    """Who is calling (401 without a valid key when keys are configured) and whether they may
    now (429 past their rate limit): call it first in a route."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.limiter = RateLimiter(settings.rate_limit)

    def __call__(self, request: Request) -> str:
        """The caller's key name (or ``anonymous@HOST`` on an open service)."""
        if self.settings.keys:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            caller = (
                self.settings.keys.identify(token.strip()) if scheme.lower() == "bearer" else None
            )
            if caller is None:
                raise ApiError(
                    401,
                    "unauthorized",
                    "a valid API key is needed: Authorization: Bearer KEY",
                    {"WWW-Authenticate": "Bearer"},
                )
        else:
            caller = f"anonymous@{request.client.host if request.client else '-'}"
        request.state.caller = caller
        wait = self.limiter.allow(caller)
        if wait:
            raise ApiError(
                429,
                "rate_limited",
                f"rate limit reached; retry after {wait:.1f} s",
                {"Retry-After": str(max(1, round(wait)))},
            )
        return caller


def check_binding(host: str, settings: ServeSettings, allow_open: bool) -> None:
    """An open service (no keys) listens on loopback only, unless asked for explicitly."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not settings.keys and not loopback and not allow_open:
        raise LmforgeError(
            f"--host {host} without API keys would let anyone on the network call the models; "
            "give --api-key (or --api-keys-file, $LMFORGE_API_KEYS), or --allow-open"
        )
