"""``lmforge monitor build``: train and export the models a monitor config names, cached.

A model given by a training config (``train:``) or to be exported (``export:``) is built into
``build_dir/<role>/<fingerprint>/``: ``run/`` is an ordinary lmforge run directory,
``export-<fingerprint>/`` an ordinary ``lmforge export`` directory. The fingerprints hash the
validated training config (with its overrides) and the export settings, so a changed config
builds anew beside the old build (new export settings export the same run again) and an
unchanged one is found again; an interrupted training resumes from its last checkpoint, as
``lmforge train`` does. The engine does the work (``lmforge.train`` and
``lmforge.export``); this module only decides what is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lmforge.apps.monitor.config import Models, ModelSpec, MonitorConfig
from lmforge.errors import LmforgeError
from lmforge.runs import METRICS_FILE

log = logging.getLogger(__name__)

BUILD_FILE = "build.json"
EXPORT_REPORT = "export_report.json"


@dataclass(frozen=True)
class Built:
    """Where one role's model is, and what building it did."""

    role: str
    path: Path  # what the monitor loads: the export if there is one, else the run
    action: str  # "built" | "cached" | "given"
    metrics: dict[str, Any]  # the held-out metrics of the run (test split, else validation)


def roles(models: Models) -> dict[str, ModelSpec]:
    specs: dict[str, ModelSpec] = {"sentiment": models.sentiment}
    if models.topic is not None and not models.topic.descriptions:
        specs["topic"] = models.topic
    return specs


def fingerprint(value: Any) -> str:
    """A short, stable hash of a JSON-able value."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def target_of(cfg: MonitorConfig, role: str, spec: ModelSpec) -> Path:
    """``build_dir/<role>/<hash of the training config, or of the given run's path>``."""
    from lmforge.config import load_config

    if spec.train:
        source: Any = {"train": load_config(spec.train, spec.overrides).model_dump(mode="json")}
    else:
        source = {"run": str(Path(spec.run or "").resolve())}
    return Path(cfg.build_dir) / role / fingerprint(source)


def export_dir(target: Path, spec: ModelSpec) -> Path:
    """``target/export-<hash of the export settings>``: other settings, another export of the
    same run (the run is not trained again)."""
    assert spec.export is not None
    return target / f"export-{fingerprint(spec.export.model_dump())}"


def model_path(cfg: MonitorConfig, role: str, spec: ModelSpec) -> Path:
    """The directory the monitor loads for ``role``; a one-line error if it is not built."""
    if not spec.needs_build:
        return Path(spec.run or "")
    target = target_of(cfg, role, spec)
    path = export_dir(target, spec) if spec.export else target / "run"
    done = export_passed(path) if spec.export else (path / METRICS_FILE).exists()
    if not done:
        raise LmforgeError(
            f"models.{role}: not built yet for these settings (expected {path}); run "
            "`lmforge monitor build CONFIG` first"
        )
    return path


def export_passed(path: Path) -> bool:
    """Whether ``path`` holds a finished export that passed its verification (a failed one is
    kept by lmforge export for inspection, marked as failed)."""
    report = path / EXPORT_REPORT
    return report.is_file() and bool(json.loads(report.read_text()).get("passed"))


def resolve_models(cfg: MonitorConfig) -> Models:
    """The config's models with every built one replaced by its directory."""
    models = cfg.models.model_copy(deep=True)
    for role, spec in roles(models).items():
        if spec.needs_build:
            built = model_path(cfg, role, spec)
            setattr(models, role, spec.model_copy(update={"run": str(built), "train": None}))
    return models


def build(cfg: MonitorConfig, force: bool = False) -> list[Built]:
    """Train and export whatever is missing; ``force`` rebuilds from scratch."""
    import lmforge

    results = []
    for role, spec in roles(cfg.models).items():
        if not spec.needs_build:
            results.append(Built(role, Path(spec.run or ""), "given", held_out(spec.run)))
            continue
        target = target_of(cfg, role, spec)
        if force and target.exists():
            shutil.rmtree(target)
        action = "cached"
        source = Path(spec.run) if spec.run else target / "run"
        if spec.train and not (source / METRICS_FILE).exists():
            log.info("build %s: training %s into %s", role, spec.train, source)
            lmforge.train(spec.train, spec.overrides, output_dir=source)  # resumes if stopped
            action = "built"
        path = source
        if spec.export:
            path = export_dir(target, spec)
            if not export_passed(path):
                if path.exists():  # an export stopped half-way: nothing in it to keep
                    shutil.rmtree(path)
                log.info("build %s: exporting %s to %s", role, source, path)
                lmforge.export(source, path, **spec.export.model_dump())
                action = "built"
        metrics = held_out(source)
        record = {
            "role": role,
            "fingerprint": target.name,  # of the training config; the export's is in its name
            "train": spec.train,
            "overrides": spec.overrides,
            "run": str(source),
            "export": spec.export.model_dump() if spec.export else None,
            "model": str(path),
            "metrics": metrics,
            "built_at": datetime.now(timezone.utc).isoformat(),
        }
        if action == "built" or not (target / BUILD_FILE).exists():
            target.mkdir(parents=True, exist_ok=True)
            (target / BUILD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        results.append(Built(role, path, action, metrics))
    return results


def held_out(run: str | Path | None) -> dict[str, Any]:
    """A run's test metrics (else validation) from its metrics.json; {} for a bare model."""
    file = Path(run or "") / METRICS_FILE
    if not file.is_file():
        return {}
    metrics = json.loads(file.read_text())
    for split in ("test", "validation"):
        if isinstance(metrics.get(split), dict):
            numbers = {k: v for k, v in metrics[split].items() if isinstance(v, int | float)}
            return {"split": split, **numbers}
    return {}
