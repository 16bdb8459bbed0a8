"""The serve recipe: load the models -> build the app -> run uvicorn until SIGTERM, then drain.

``lmforge serve MODEL [NAME=MODEL ...] [--host 127.0.0.1] [--port 8000] [--api-key KEY ...]``

Models are run directories, model directories or exports (ONNX directories run on ONNX
Runtime); each is served under its name (``NAME=PATH``, or the directory's name). Without
API keys the service only binds to loopback, unless ``allow_open`` says otherwise. On SIGTERM
or Ctrl-C uvicorn stops accepting connections, in-flight requests finish (the batchers
drain their queues), then the process exits.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.serving.app import ServedModel, ServeSettings, create_app
from lmforge.serving.generation import GENERATIVE_TASKS
from lmforge.serving.telemetry import mask_all_logs

log = logging.getLogger(__name__)


def model_name(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` (named after the run: ``runs/fpb/model`` is ``fpb``)."""
    name, sep, path = spec.partition("=")
    if not sep:
        path = spec
        resolved = Path(spec.rstrip("/"))
        name = resolved.parent.name if resolved.name in ("model", "adapter") else resolved.name
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise LmforgeError(f"model name {name!r} (from {spec!r}): use letters, digits, '-', '_' and '.'; "
                           "or give NAME=PATH")
    return name, path


def load_models(specs: list[str], precision: str = "auto") -> dict[str, ServedModel]:
    """Every model loaded (a bad one stops start-up with its one-line error), under unique names."""
    from lmforge.inference.predictor import Predictor

    models: dict[str, ServedModel] = {}
    for spec in specs:
        name, path = model_name(spec)
        if name in models:
            raise LmforgeError(f"two models are named '{name}'; name them: NAME=PATH")
        predictor = Predictor.load(path, precision=precision)
        if getattr(predictor.task, "loss_only", False) and predictor.task.name not in GENERATIVE_TASKS:
            raise LmforgeError(f"{path} is a {predictor.task.name.replace('_', ' ')} model: it has no endpoint "
                               "(fine-tune it for a task first)")
        models[name] = ServedModel(name, predictor, path)
        log.info("model %s: %s (%s, %s)", name, path, predictor.task.name, models[name].backend)
    return models


def check_binding(host: str, settings: ServeSettings, allow_open: bool) -> None:
    """An open service (no keys) listens on loopback only, unless asked for explicitly."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not settings.keys and not loopback and not allow_open:
        raise LmforgeError(f"--host {host} without API keys would let anyone on the network call the models; "
                           "give --api-key (or --api-keys-file, $LMFORGE_API_KEYS), or --allow-open")


def serve(specs: list[str], settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000,
          precision: str = "auto", allow_open: bool = False, graceful_seconds: float = 30.0) -> None:
    """Run the service in this process until it is stopped."""
    import uvicorn

    check_binding(host, settings, allow_open)
    models = load_models(specs, precision)
    app = create_app(models, settings)
    if not settings.keys:
        log.warning("no API keys: the service is open to every caller on %s", host)
    config = uvicorn.Config(app, host=host, port=port, log_level="info", access_log=False,
                            timeout_graceful_shutdown=graceful_seconds)
    server = uvicorn.Server(config)
    mask_all_logs()
    log.info("serving %s on http://%s:%d (docs: /docs, metrics: /metrics)", ", ".join(models), host, port)
    server.run()


def settings_from(args: Any) -> ServeSettings:
    """The CLI flags as settings (keys gathered from flags, a file and the environment)."""
    from lmforge.serving.security import ApiKeys, RateLimit

    positive = {"--max-body-bytes": args.max_body_bytes, "--max-texts": args.max_texts,
                "--max-chars": args.max_chars, "--max-batch-size": args.max_batch_size,
                "--max-queue": args.max_queue}
    for flag, value in positive.items():
        if value < 1:
            raise LmforgeError(f"{flag} must be at least 1 (got {value})")
    if args.max_wait_ms < 0:
        raise LmforgeError(f"--max-wait-ms must be 0 or more (got {args.max_wait_ms})")
    return ServeSettings(keys=ApiKeys.gather(args.api_key, args.api_keys_file),
                         rate_limit=RateLimit.parse(args.rate_limit) if args.rate_limit else None,
                         max_body_bytes=args.max_body_bytes, max_texts=args.max_texts, max_chars=args.max_chars,
                         mask_inputs=args.mask_inputs, cors_origins=list(args.cors_origin),
                         max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue)
