"""The lmforge service on a Ray cluster: the same FastAPI app, one copy per Ray Serve replica.

``serve run lmforge.serving.ray_serve:app_builder models=runs/fpb,lm=runs/lm num_replicas=2``

Each replica is one process that loads the models itself
(:func:`~lmforge.serving.recipe.load_models`) and serves :func:`~lmforge.serving.app.create_app`
as its ingress; Ray Serve's HTTP proxy spreads requests over the replicas and restarts the ones
that die. Nothing of the app changes: keys,
limits, micro-batching, hot reload and metrics work per replica as under ``lmforge serve``.

The arguments are ``lmforge serve``'s settings (:class:`~lmforge.serving.config.ServeConfig`: the
same names, the same checks, ``config=serve.yaml`` for the file) plus the replicas' size:
``num_replicas``, ``num_cpus``, ``num_gpus``. Where the service listens is Ray Serve's business
(``http_options``), so ``host``, ``port`` and ``workers`` are not arguments here.

Why the app is built by a function, on the replica: ``serve.ingress(app)`` would pickle an app
built on the driver, models and all; ``serve.ingress(build)`` calls ``build`` in the replica's
constructor, so each replica loads the weights from its own node's disk.

The lifespan: Ray Serve runs the ASGI app's lifespan on each replica once it is constructed
(uvicorn's ``LifespanOn`` in ``ray.serve._private.http_util.ASGIAppReplicaWrapper``, awaited
before the replica takes requests) and its shutdown half when the replica stops. So the
micro-batchers and generation runners start and drain there, as under uvicorn;
``tests/serving/test_ray_serve.py`` checks it end to end (``/readyz`` is 200 only after the
lifespan ran).

API keys come from ``$LMFORGE_API_KEYS`` and ``api_keys_file`` where the app is built (the
``serve run`` process, or the cluster for ``serve deploy``); replicas receive SHA-256 digests only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from lmforge.errors import LmforgeError, did_you_mean

if TYPE_CHECKING:
    from fastapi import FastAPI
    from ray.serve import Application, Deployment

    from lmforge.serving.config import ServeConfig
    from lmforge.serving.security import ApiKeys

log = logging.getLogger(__name__)

DEPLOYMENT_NAME = "lmforge"
# Ray Serve's default (5 requests in a replica at once) would starve the micro-batcher, which
# needs concurrent requests to fill a batch; the app's own queue bound answers 503 beyond this.
MAX_ONGOING_REQUESTS = 256
# lmforge serve's settings that Ray Serve decides instead, and what to use there
NOT_ON_RAY = {
    "host": "Ray Serve's http_options (serve start --http-host, or the config file)",
    "port": "Ray Serve's http_options (serve start --http-port, or the config file)",
    "workers": "num_replicas",
}
LISTS = ("models", "cors_origins")  # comma-separated on the command line


@dataclass(frozen=True)
class ReplicaResources:
    """How many replicas, and what each reserves on its node."""

    num_replicas: int = 1  # processes that each hold all the models; Ray places them on the cluster
    num_cpus: float = (
        1.0  # CPUs per replica (Ray also sets OMP_NUM_THREADS, torch's threads, from it)
    )
    num_gpus: float = 0.0  # GPUs per replica (0: the replica sees no GPU)

    @classmethod
    def parse(cls, args: dict[str, Any]) -> ReplicaResources:
        out = cls(
            _number(args, "num_replicas", int, cls.num_replicas),
            _number(args, "num_cpus", float, cls.num_cpus),
            _number(args, "num_gpus", float, cls.num_gpus),
        )
        if out.num_replicas < 1:
            raise LmforgeError(f"num_replicas must be at least 1 (got {out.num_replicas})")
        if out.num_cpus <= 0:
            raise LmforgeError(f"num_cpus must be more than 0 (got {out.num_cpus:g})")
        if out.num_gpus < 0:
            raise LmforgeError(f"num_gpus must be 0 or more (got {out.num_gpus:g})")
        return out


def _number(args: dict[str, Any], key: str, kind: type, default: float) -> float:
    value = args.get(key, default)
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise LmforgeError(
            f"{key}={value}: expected {'a whole number' if kind is int else 'a number'}"
        ) from None


def parse_args(args: dict[str, Any]) -> tuple[ReplicaResources, ServeConfig]:
    """The replicas' size and the service's :class:`~lmforge.serving.config.ServeConfig`, from
    ``serve run`` arguments (all strings) or a Serve config file's ``args:`` (typed YAML)."""
    from lmforge.serving.config import load_serve_config, setting_names

    resources_keys = [f.name for f in ReplicaResources.__dataclass_fields__.values()]
    known = [
        "config",
        *resources_keys,
        *(k for k in setting_names() if k not in NOT_ON_RAY),
    ]
    for key in args:
        if key in NOT_ON_RAY:
            raise LmforgeError(f"{key}: on Ray Serve, use {NOT_ON_RAY[key]}")
        if key not in known:
            raise LmforgeError(
                f"unknown argument '{key}'{did_you_mean(key, known)}; app_builder takes "
                f"{', '.join(known)}"
            )
    resources = ReplicaResources.parse(args)
    flags = {
        key: _as_list(value) if key in LISTS else value
        for key, value in args.items()
        if key not in resources_keys and key != "config"
    }
    config = load_serve_config(args.get("config"), flags)
    return resources, config.model_copy(update={"models": absolute_specs(config.models)})


def _as_list(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def absolute_specs(specs: list[str]) -> list[str]:
    """``NAME=PATH`` for every spec, each name checked and unique, and a local path made absolute:
    replicas run with another working directory (and on other nodes, where the path must exist
    too)."""
    from lmforge.serving.recipe import model_name

    out, names = [], set()
    for spec in specs:
        name, path = model_name(spec)
        if name in names:
            raise LmforgeError(f"two models are named '{name}'; name them: NAME=PATH")
        names.add(name)
        local = Path(path).expanduser()
        out.append(f"{name}={local.resolve() if local.exists() else path}")
    return out


def _ray_serve() -> ModuleType:
    try:
        from ray import serve
    except ImportError:
        raise LmforgeError(
            "serving on Ray needs Ray Serve: pip install 'lmforge[serve-ray]'"
        ) from None
    return serve


def lmforge_deployment(
    resources: ReplicaResources, config: ServeConfig, keys: ApiKeys
) -> Deployment:
    """The Ray Serve deployment: replicas that each load ``config.models`` and serve the app.

    Args:
        resources: How many replicas of what size.
        config: The service's :class:`~lmforge.serving.config.ServeConfig` (models, limits,
            batching).
        keys: :class:`~lmforge.serving.security.ApiKeys` (digests; pickled to the replicas).
    """
    serve = _ray_serve()
    specs, precision, settings = list(config.models), config.precision, config.settings(keys)

    def build_app() -> FastAPI:
        """Runs in each replica's constructor: the models are loaded in the replica's own
        process."""
        from lmforge.serving.app import create_app
        from lmforge.serving.recipe import load_models
        from lmforge.serving.telemetry import mask_all_logs

        mask_all_logs()
        return create_app(load_models(specs, precision), settings)

    @serve.deployment(
        name=DEPLOYMENT_NAME,
        num_replicas=resources.num_replicas,
        ray_actor_options={"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus},
        max_ongoing_requests=MAX_ONGOING_REQUESTS,
        graceful_shutdown_timeout_s=config.graceful_seconds,
    )
    @serve.ingress(build_app)
    class LmforgeService:
        """One replica of the service; the app's routes and lifespan do all the work."""

    return LmforgeService


def app_builder(args: dict[str, Any]) -> Application:
    """The application for
    ``serve run lmforge.serving.ray_serve:app_builder models=... [key=value ...]``.

    Keys come from ``$LMFORGE_API_KEYS`` (``KEY`` or ``NAME:KEY``, comma-separated) and
    ``api_keys_file``; without any, building fails unless ``allow_open=true``: a cluster's proxy
    is there to be reached.
    """
    from lmforge.serving.security import KEYS_ENV, ApiKeys

    resources, config = parse_args(args)
    keys = ApiKeys.gather([], config.api_keys_file)
    if not keys and not config.allow_open:
        raise LmforgeError(
            f"no API keys: set ${KEYS_ENV} (e.g. alice:KEY,bob:KEY) or api_keys_file where the "
            "app is built, or pass allow_open=true"
        )
    if config.workers > 1:  # from a serve.yaml shared with `lmforge serve`
        log.warning("workers: %d is ignored on Ray Serve; use num_replicas", config.workers)
    log.info(
        "lmforge on Ray Serve: %s, %d replica(s) of %g CPU, %g GPU",
        ", ".join(config.models),
        resources.num_replicas,
        resources.num_cpus,
        resources.num_gpus,
    )
    return lmforge_deployment(resources, config, keys).bind()
