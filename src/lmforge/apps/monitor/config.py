"""The monitor's YAML config, validated at load like a run config (unknown keys are errors)."""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lmforge.apps.monitor.windows import parse_duration
from lmforge.config.errors import format_validation_error
from lmforge.config.loader import apply_overrides, read_yaml
from lmforge.errors import LmforgeError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SentimentModel(_Strict):
    """A sequence-classification model whose labels include a negative and a positive class."""

    run: str = Field(description="Run or export directory (or model directory) of the model.")
    negative: str = Field("negative", description="The label that counts as negative.")
    positive: str = Field("positive", description="The label that counts as positive.")


class TopicModel(_Strict):
    """Topics from a trained classifier (``run``), or from short descriptions matched by an
    embedding model (``descriptions``, for users without labeled topic data)."""

    run: str | None = Field(
        None,
        description="Classifier run/export directory; with descriptions: the embedding model "
        "(default: the packaged MiniLM).",
    )
    descriptions: dict[str, str] | None = Field(
        None, description="topic -> a sentence describing it; the closest topic wins."
    )
    min_similarity: float = Field(
        0.0, ge=-1.0, le=1.0, description="With descriptions: below this cosine, topic 'other'."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> TopicModel:
        if self.run is None and not self.descriptions:
            raise ValueError("name a classifier (run:) or give topic descriptions (descriptions:)")
        return self


class Models(_Strict):
    sentiment: SentimentModel
    topic: TopicModel | None = Field(None, description="Without it every document is 'all'.")


class Fields(_Strict):
    """Which field (JSONL key or CSV column) holds what."""

    text: str = "text"
    timestamp: str = "timestamp"
    id: str | None = Field("id", description="Absent or empty: the id is a hash of the text.")
    title: str | None = "title"
    url: str | None = "url"


class FileSource(_Strict):
    kind: Literal["file"] = "file"
    name: str = Field(description="The source's name, stored with every document.")
    path: str = Field(description="A JSONL or CSV file, or a glob of them (read in name order).")
    format: Literal["auto", "jsonl", "csv"] = "auto"
    encoding: str = "utf-8"
    fields: Fields = Field(default_factory=Fields)


class Rule(_Strict):
    """A surge rule, evaluated on every closed window of its size (as a Prometheus alerting
    rule is evaluated on every interval)."""

    name: str
    metric: Literal["negative_share", "negative_volume", "mean_score"] = "negative_share"
    window: str = Field("1d", description="One of the config's windows.")
    topics: list[str] | None = Field(
        None, description="Topics to watch (default: every topic seen, and 'all')."
    )
    method: Literal["ewma", "threshold"] = Field(
        "ewma", description="ewma: deviation from an EWMA baseline; threshold: a fixed value."
    )
    threshold: float | None = Field(None, description="method threshold: fire beyond this.")
    z: float = Field(3.0, gt=0, description="method ewma: fire this many deviations away.")
    alpha: float = Field(0.2, gt=0, le=1, description="method ewma: the baseline's weight.")
    warmup: int = Field(
        5, ge=1, description="method ewma: windows of baseline before the rule can fire."
    )
    min_delta: float = Field(
        0.0,
        ge=0,
        description="method ewma: the metric must also be this far from the baseline (a share "
        "of 0.0 -> 0.2 after a silent baseline is 'infinite' deviations, yet may be noise).",
    )
    min_volume: int = Field(5, ge=1, description="Windows with fewer documents are not judged.")
    for_: int = Field(
        1, ge=1, alias="for", description="Consecutive surging windows before the alert fires."
    )
    cooldown: int = Field(
        0, ge=0, description="Windows after a resolution in which the rule cannot fire again."
    )
    top_documents: int = Field(10, ge=0, le=100, description="Documents kept with an alert.")

    @property
    def direction(self) -> int:
        """+1 when high values are bad (negative share/volume), -1 for the mean score."""
        return -1 if self.metric == "mean_score" else 1

    @model_validator(mode="after")
    def _threshold_given(self) -> Rule:
        if self.method == "threshold" and self.threshold is None:
            raise ValueError(f"rule {self.name}: method threshold needs threshold: VALUE")
        return self


class MonitorConfig(_Strict):
    name: str = "monitor"
    store: str = Field(
        "monitor.db",
        description="A SQLite file (relative to the config) or a SQLAlchemy URL, e.g. "
        "postgresql+psycopg://user:pass@host/db.",
    )
    models: Models
    sources: list[FileSource] = Field(default_factory=list)
    windows: list[str] = Field(default_factory=lambda: ["1h", "1d"])
    lateness: str = Field(
        "1h",
        description="How late a document may arrive before its window is judged ('0s': judge "
        "a window as soon as a later document arrives).",
    )
    rules: list[Rule] = Field(default_factory=list)
    batch_size: int = Field(64, ge=1, le=4096, description="Documents classified at once.")
    max_text_chars: int = Field(
        100_000, ge=1, description="Longer texts are quarantined, not classified."
    )
    device: str = "auto"
    precision: str = "auto"

    @field_validator("windows")
    @classmethod
    def _windows(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("list at least one window, e.g. [1h, 1d]")
        for text in value:
            try:
                parse_duration(text, "windows")
            except LmforgeError as err:
                raise ValueError(str(err)) from None
        return value

    @model_validator(mode="after")
    def _rules_use_windows(self) -> MonitorConfig:
        try:
            parse_duration(self.lateness, "lateness", allow_zero=True)
        except LmforgeError as err:
            raise ValueError(str(err)) from None
        names = [rule.name for rule in self.rules]
        if len(set(names)) != len(names):
            raise ValueError("rule names must be unique")
        for rule in self.rules:
            if rule.window not in self.windows:
                raise ValueError(
                    f"rule {rule.name}: window {rule.window} is not one of windows {self.windows}"
                )
        return self

    def window_sizes(self) -> dict[str, timedelta]:
        return {text: parse_duration(text) for text in self.windows}

    def store_url(self) -> str:
        """A SQLAlchemy URL; a plain path is a SQLite file."""
        return self.store if "://" in self.store else f"sqlite:///{self.store}"


def load_monitor_config(
    source: str | Path | dict[str, Any], overrides: list[str] | None = None
) -> MonitorConfig:
    """Read, override (``--set key=value``) and validate a monitor config; paths in it are
    relative to the config file."""
    label = "config" if isinstance(source, dict) else str(source)
    data = (
        copy.deepcopy(source)
        if isinstance(source, dict)
        else read_yaml(source, needs="models.sentiment.run")
    )
    data = apply_overrides(data, overrides or [])
    try:
        cfg = MonitorConfig.model_validate(data)
    except ValidationError as err:
        raise LmforgeError(f"{label}: {format_validation_error(err, MonitorConfig)}") from None
    if not isinstance(source, dict):
        _resolve_paths(cfg, Path(source).resolve().parent)
    return cfg


def _resolve_paths(cfg: MonitorConfig, base: Path) -> None:
    """A relative path that does not exist from the working directory is taken from the
    config's folder (the rule of run configs)."""

    def resolve(path: str) -> str:
        if Path(path).is_absolute() or Path(path).exists() or path == "default":
            return path
        candidate = base / path
        import glob

        found = candidate.exists() or (glob.has_magic(path) and glob.glob(str(candidate)))
        return str(candidate) if found else path

    cfg.models.sentiment.run = resolve(cfg.models.sentiment.run)
    if cfg.models.topic is not None and cfg.models.topic.run:
        cfg.models.topic.run = resolve(cfg.models.topic.run)
    for source in cfg.sources:
        source.path = resolve(source.path)
    if "://" not in cfg.store and not Path(cfg.store).is_absolute():
        cfg.store = str(base / cfg.store)
