"""What the service tells its operators: Prometheus metrics and JSON access logs with request
ids."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from lmforge.serving.security import MaskingFilter

ACCESS_LOGGER = "lmforge.access"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MULTIPROC_ENV = (
    "PROMETHEUS_MULTIPROC_DIR"  # set: several worker processes write their metrics there
)


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (several apps in one process,
    as in tests, do not collide)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lmforge_requests",
            "Requests answered, by endpoint, model and status",
            ["endpoint", "model", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "lmforge_request_latency_seconds",
            "Time from request to answer",
            ["endpoint", "model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "lmforge_batch_size",
            "Texts per forward pass",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_latency = Histogram(
            "lmforge_batch_latency_seconds",
            "Time of one batch's forward pass",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "lmforge_queue_depth",
            "Texts waiting for a batch",
            ["model"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.errors = Counter(
            "lmforge_errors", "Requests that failed, by type", ["type"], registry=self.registry
        )
        self.texts = Counter("lmforge_texts", "Texts processed", ["model"], registry=self.registry)
        self.prompt_tokens = Counter(
            "lmforge_prompt_tokens",
            "Prompt tokens of generation requests",
            ["model"],
            registry=self.registry,
        )
        self.generated_tokens = Counter(
            "lmforge_generated_tokens", "Tokens generated", ["model"], registry=self.registry
        )
        self.reloads = Counter(
            "lmforge_model_reloads",
            "Hot reloads of a model directory, by result",
            ["model", "result"],
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "lmforge_time_to_first_token_seconds",
            "Streams: time from request to the first piece of text",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format: this process's, or, with several workers, all
        of theirs."""
        from prometheus_client import (
            CONTENT_TYPE_LATEST,
            CollectorRegistry,
            generate_latest,
            multiprocess,
        )

        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def access_logger() -> logging.Logger:
    """JSON lines on stderr, personal data masked in every one."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(MaskingFilter())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def mask_all_logs() -> None:
    """Personal data masked in every log line the process writes: lmforge's, uvicorn's, the
    root's."""
    for name in ("", "lmforge", "uvicorn", "uvicorn.error", "uvicorn.access", ACCESS_LOGGER):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, MaskingFilter) for f in handler.filters):
                handler.addFilter(MaskingFilter())


def new_request_id(given: str | None) -> str:
    """The client's X-Request-ID when it is a sane token, else a fresh one."""
    if given and len(given) <= 64 and all(c.isalnum() or c in "-_." for c in given):
        return given
    return uuid.uuid4().hex


def log_access(
    request_id: str, method: str, path: str, status: int, started: float, **fields: Any
) -> None:
    now = datetime.now(timezone.utc)
    record = {
        "time": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
        "request_id": request_id,
        "method": method,
        "path": path,
        "status": status,
        "latency_ms": round(1000 * (time.perf_counter() - started), 2),
        **fields,
    }
    access_logger().info(json.dumps(record, ensure_ascii=False))
