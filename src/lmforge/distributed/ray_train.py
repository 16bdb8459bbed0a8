"""``lmforge train --ray``: the same recipe inside Ray Train workers, on a local Ray or a cluster.

Ray Train's ``TorchTrainer`` places the workers (CPUs, GPUs) on the cluster, sets up the
torch process group (gloo on CPU, NCCL on GPU) and the standard ``RANK``/``WORLD_SIZE``
variables; each worker then runs the config's recipe (:func:`lmforge.run`) exactly as a
torchrun process would. Checkpoints, the model and the report go to the run directory,
which on a multi-node cluster must be a path every node sees (a shared filesystem).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from lmforge.config import RunConfig
from lmforge.errors import LmforgeError

log = logging.getLogger(__name__)


def absolute_paths(cfg: RunConfig) -> RunConfig:
    """Local paths in the config made absolute: Ray workers do not share the driver's working
    directory."""
    out = cfg.model_copy(deep=True)
    for key in ("train_file", "validation_file", "test_file"):
        value = getattr(out.data, key)
        if value:
            setattr(out.data, key, str(Path(value).resolve()))
    if Path(out.model.name_or_path).exists():
        out.model.name_or_path = str(Path(out.model.name_or_path).resolve())
    if out.continue_from:
        out.continue_from = str(Path(out.continue_from).resolve())
    return out


def train_with_ray(
    cfg: RunConfig,
    output_dir: Path,
    resume: bool | None,
    workers: int,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: int | None = None,
    address: str | None = None,
) -> Path:
    """Train ``cfg`` with ``workers`` Ray Train workers; return the run directory."""
    try:
        import ray
        from ray.train import RunConfig as RayRunConfig
        from ray.train import ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError:
        raise LmforgeError("--ray needs Ray Train: pip install 'lmforge[ray]'") from None
    if workers < 1:
        raise LmforgeError(f"--workers must be at least 1 (got {workers})")
    run_dir = output_dir.resolve()
    if address:
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False, ignore_reinit_error=True)
    cpus = cpus_per_worker or max(1, int(ray.cluster_resources().get("CPU", 1)) // workers)
    cfg = absolute_paths(cfg)
    if cfg.training.num_threads is None:
        cfg.training.num_threads = cpus
    resources: dict[str, float] = {"CPU": cpus}
    if gpus_per_worker:
        resources["GPU"] = gpus_per_worker
    trainer = TorchTrainer(
        _worker,
        train_loop_config={
            "config": cfg.model_dump(mode="json"),
            "output_dir": str(run_dir),
            "resume": resume,
        },
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=gpus_per_worker > 0, resources_per_worker=resources
        ),
        # Ray's own bookkeeping (not lmforge's checkpoints) beside the run directory.
        run_config=RayRunConfig(name=run_dir.name, storage_path=str(run_dir.parent / ".ray")),
    )
    log.info(
        "Ray Train: %d workers x %s on %s", workers, resources, address or "a local Ray instance"
    )
    try:
        trainer.fit()
    except Exception as err:  # Ray wraps the worker's exception (TrainingFailedError and the like)
        cause = _root_cause(err)
        if isinstance(cause, LmforgeError):
            raise LmforgeError(str(cause)) from None
        raise
    return run_dir


def _root_cause(err: BaseException) -> BaseException:
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        nested = getattr(err, "worker_failures", None)
        if isinstance(nested, dict) and nested:
            err = next(iter(nested.values()))
        elif err.__cause__ is not None:
            err = err.__cause__
        else:
            break
    return err


def _worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: the process group is up; run the recipe like a torchrun process."""
    from lmforge import run
    from lmforge.logs import setup_logging

    setup_logging(verbose=False, quiet=int(os.environ.get("RANK", "0")) > 0)
    cfg = RunConfig.model_validate(loop_config["config"])
    run(cfg, loop_config["output_dir"], loop_config["resume"])
