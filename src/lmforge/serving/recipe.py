"""The serve recipe: load the models -> build the app -> run uvicorn until SIGTERM, then drain.

``lmforge serve MODEL [NAME=MODEL ...] [--host 127.0.0.1] [--port 8000] [--api-key KEY ...]``

Models are run directories, model directories or exports (ONNX directories run on ONNX
Runtime); each is served under its name (``NAME=PATH``, or the directory's name). Without
API keys the service only binds to loopback, unless ``allow_open`` says otherwise. On SIGTERM
or Ctrl-C uvicorn stops accepting connections, in-flight requests finish (the batchers
drain their queues), then the process exits.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.serving.app import ServedModel, create_app
from lmforge.serving.config import ServeConfig
from lmforge.serving.guard import check_binding
from lmforge.serving.reload import own_weights
from lmforge.serving.security import ApiKeys
from lmforge.serving.telemetry import MULTIPROC_ENV, mask_all_logs

log = logging.getLogger(__name__)


def model_name(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` (named after the run: ``runs/fpb/model`` is ``fpb``)."""
    name, sep, path = spec.partition("=")
    if not sep:
        path = spec
        resolved = Path(spec.rstrip("/"))
        name = resolved.parent.name if resolved.name in ("model", "adapter") else resolved.name
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise LmforgeError(
            f"model name {name!r} (from {spec!r}): use letters, digits, '-', '_' and '.'; "
            "or give NAME=PATH"
        )
    return name, path


def check_models(specs: list[str]) -> list[tuple[str, str]]:
    """(name, path) of every model, names unique and each of a task the service answers, read
    from the directories' metadata without loading any weights."""
    from lmforge.runs import find_model_dir, read_metadata
    from lmforge.tasks.registry import TASK_NAMES, get_task, task_of_architecture

    named: dict[str, str] = {}
    for spec in specs:
        name, path = model_name(spec)
        if name in named:
            raise LmforgeError(f"two models are named '{name}'; name them: NAME=PATH")
        model_dir = find_model_dir(path)
        task = read_metadata(model_dir).get("task") or task_of_architecture(model_dir)
        servable = task not in TASK_NAMES or get_task(task).endpoint is not None
        if not servable:  # (an unknown task is Predictor.load's one-line error)
            raise LmforgeError(
                f"{path} is a {task.replace('_', ' ')} model: it has no endpoint "
                "(fine-tune it for a task first)"
            )
        named[name] = path
    return list(named.items())


def load_models(specs: list[str], precision: str = "auto") -> dict[str, ServedModel]:
    """Every model loaded (a bad one stops start-up with its one-line error), under unique names."""
    from lmforge.inference.predictor import Predictor

    models: dict[str, ServedModel] = {}
    for name, path in check_models(specs):
        predictor = own_weights(
            Predictor.load(path, precision=precision)
        )  # its files may be rewritten
        models[name] = ServedModel(name, predictor, path, precision=precision)
        log.info("model %s: %s (%s, %s)", name, path, predictor.task.name, models[name].backend)
    return models


def serve(config: ServeConfig, keys: ApiKeys) -> None:
    """Run the service until it is stopped: in this process, or in ``config.workers`` processes."""
    import uvicorn

    settings = config.settings(keys)
    check_binding(config.host, settings, config.allow_open)
    if not settings.keys:
        log.warning("no API keys: the service is open to every caller on %s", config.host)
    options = {
        "host": config.host,
        "port": config.port,
        "log_level": "info",
        "access_log": False,
        "timeout_graceful_shutdown": config.graceful_seconds,
    }
    if config.workers > 1:
        serve_workers(config, keys, options)
        return
    models = load_models(config.models, config.precision)
    settings.model_threads = tune_process(config)
    server = uvicorn.Server(uvicorn.Config(create_app(models, settings), **options))
    mask_all_logs()
    log.info(
        "serving %s on http://%s:%d (docs: /docs, metrics: /metrics)",
        ", ".join(models),
        config.host,
        config.port,
    )
    server.run()


WORKER_ENV = "LMFORGE_SERVE_WORKER"
GIL_SWITCH_SECONDS = 0.0005


def tune_process(config: ServeConfig) -> int:
    """Set this server process's threads up for serving; returns the model threads per CPU model."""
    share_the_gil()
    return model_threads(config)


def model_threads(config: ServeConfig) -> int:
    """How many batches of a CPU model run at once (``config.model_threads``, else the worker's
    cores, at most 4), and PyTorch's threads to match: the worker's cores shared among them.

    Why not one batch over all cores: MiniLM's matmuls on a sentence batch are too small for
    PyTorch's intra-op threads to pay. Two cores, FPB sentences, forward passes of 8: one batch at
    a time with 2 threads 86 texts/s, with 1 thread 94; two batches at once, 1 thread each, 165.
    """
    import torch

    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    cores = max(1, cores // config.workers)
    threads = config.model_threads or min(4, cores)
    torch.set_num_threads(max(1, cores // threads))
    return threads


def share_the_gil() -> None:
    """Hand the GIL between threads every 0.5 ms instead of Python's 5 ms.

    Why: the model thread takes the GIL back between PyTorch ops hundreds of times a batch;
    while the event loop parses a burst of requests, each take can wait a whole switch
    interval. Measured with 32 clients on FPB (2 cores): 58 -> 63-70 requests/s.
    """
    sys.setswitchinterval(GIL_SWITCH_SECONDS)


def serve_workers(config: ServeConfig, keys: ApiKeys, options: dict[str, Any]) -> None:
    """``config.workers`` uvicorn processes on one port (the kernel spreads the connections).

    Each worker loads its own copy of the models (memory grows with the workers) and rebuilds
    the app from the settings in ``$LMFORGE_SERVE_WORKER`` (keys as digests only). Metrics are
    summed over the workers through prometheus-client's multiprocess mode; rate limits are
    kept per worker, so a key's effective limit is up to ``workers`` times the configured one.
    """
    import uvicorn

    check_models(
        config.models
    )  # a bad model stops here, with its one-line error, before any worker starts
    metrics_dir = os.environ.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="lmforge-metrics-")
    for stale in Path(metrics_dir).glob("*.db"):  # left over from an earlier run
        stale.unlink()
    os.environ[MULTIPROC_ENV] = metrics_dir
    os.environ[WORKER_ENV] = json.dumps({"config": config.model_dump(), "keys": keys.digests()})
    log.info(
        "serving %s on http://%s:%d with %d workers",
        ", ".join(config.models),
        config.host,
        config.port,
        config.workers,
    )
    uvicorn.run(
        "lmforge.serving.recipe:worker_app", factory=True, workers=config.workers, **options
    )


def worker_app() -> Any:
    """The app of one worker process (uvicorn calls this in each)."""
    payload = json.loads(os.environ[WORKER_ENV])
    config = ServeConfig.model_validate(payload["config"])
    models = load_models(config.models, config.precision)
    mask_all_logs()
    settings = config.settings(ApiKeys.from_digests(payload["keys"]))
    settings.model_threads = tune_process(config)
    return create_app(models, settings)
