"""The monitor's YAML config, validated at load like a run config (unknown keys are errors)."""

from __future__ import annotations

import copy
import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from lmforge.apps.monitor.windows import parse_duration
from lmforge.config.errors import format_validation_error
from lmforge.config.loader import apply_overrides, read_yaml, resolve_relative
from lmforge.errors import LmforgeError
from lmforge.serving.config import ServeSettings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ExportSpec(_Strict):
    """How ``lmforge monitor build`` exports a model (``lmforge export``), verified against the
    original: ONNX int8 is the fastest CPU backend."""

    format: Literal["onnx", "hf"] = "onnx"
    quantize: Literal["none", "int8"] = "int8"
    tolerance: float = Field(
        1.0,
        ge=0,
        description="Points of the metric the export may lose on the run's held-out split "
        "before the build fails (lmforge export --tolerance).",
    )


class ModelSpec(_Strict):
    """A model named by an existing directory (``run``) or by an lmforge training config
    (``train``) that ``lmforge monitor build`` trains, optionally exports, and caches."""

    run: str | None = Field(
        None, description="Run or export directory (or model directory) of the model."
    )
    train: str | None = Field(
        None, description="An lmforge training config (as for `lmforge train`) to build from."
    )
    overrides: list[str] = Field(
        default_factory=list, description="With train: KEY=VALUE overrides, as --set."
    )
    export: ExportSpec | None = Field(
        None, description="Export the model before use (built by `lmforge monitor build`)."
    )

    @property
    def needs_build(self) -> bool:
        return self.train is not None or self.export is not None


def _one_source(spec: ModelSpec, role: str, descriptions: bool = False) -> None:
    given = [name for name in ("run", "train") if getattr(spec, name)]
    if len(given) > 1:
        raise ValueError(f"models.{role}: give run or train, not both")
    if not given and not descriptions:
        raise ValueError(
            f"models.{role}: name a model directory (run:) or a training config (train:)"
        )


class SentimentModel(ModelSpec):
    """A sequence-classification model whose labels include a negative and a positive class."""

    negative: str = Field("negative", description="The label that counts as negative.")
    positive: str = Field("positive", description="The label that counts as positive.")

    @model_validator(mode="after")
    def _one_kind(self) -> SentimentModel:
        _one_source(self, "sentiment")
        return self


class TopicModel(ModelSpec):
    """Topics from a trained classifier (``run`` or ``train``; single- or multi-label: the most
    probable label wins), or from short descriptions matched by an embedding model
    (``descriptions``, for users without labeled topic data)."""

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
        if self.descriptions and (self.train or self.export):
            raise ValueError("models.topic: descriptions use an embedding model as it is")
        if self.run is None and self.train is None and not self.descriptions:
            raise ValueError(
                "models.topic: name a classifier (run: or train:) or give topic descriptions "
                "(descriptions:)"
            )
        _one_source(self, "topic", descriptions=bool(self.descriptions))
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
    path: str = Field(
        description="A JSONL or CSV file, a glob of them (read in name order), or '-' for "
        "JSON lines on standard input."
    )
    format: Literal["auto", "jsonl", "csv"] = "auto"
    encoding: str = "utf-8"
    fields: Fields = Field(default_factory=Fields)
    follow: bool = Field(
        False,
        description="lmforge monitor run: keep reading lines appended to the files and new "
        "files matching the glob (name them so that they sort in time order).",
    )


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"url {value!r}: use an http:// or https:// URL")
    return value


def _check_durations(model: BaseModel, names: tuple[str, ...], where: str) -> None:
    """Each named field parses as a duration; the error names ``where.field``."""
    for name in names:
        try:
            parse_duration(getattr(model, name), f"{where}.{name}")
        except LmforgeError as err:
            raise ValueError(str(err)) from None


class FeedSource(_Strict):
    """An RSS or Atom feed, polled by ``lmforge monitor run`` (entries are deduplicated by
    their id or link, so overlapping polls store each entry once)."""

    kind: Literal["feed"]
    name: str = Field(description="The source's name, stored with every document.")
    url: str = Field(description="The feed's http(s) URL.")
    interval: str = Field("5m", description="Time between polls.")
    timeout: str = Field("10s", description="Per request; a poll that times out is quarantined.")

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        return _http_url(value)

    @model_validator(mode="after")
    def _durations(self) -> FeedSource:
        _check_durations(self, ("interval", "timeout"), f"sources.{self.name}")
        return self


def _source_kind(value: Any) -> str:
    return value.get("kind", "file") if isinstance(value, dict) else getattr(value, "kind", "file")


Source = Annotated[
    Annotated[FileSource, Tag("file")] | Annotated[FeedSource, Tag("feed")],
    Discriminator(_source_kind),
]


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


class LogSink(_Strict):
    """Alerts as warning lines in the log."""

    kind: Literal["log"] = "log"


class WebhookSink(_Strict):
    """Alerts POSTed as JSON to ``url``: written to the store's outbox in the transaction that
    opened or closed the alert, then delivered and retried with exponential backoff, so an
    unreachable receiver loses nothing (delivery is at least once: receivers deduplicate on
    the ``X-Lmforge-Delivery`` header)."""

    kind: Literal["webhook"]
    name: str = Field(description="The sink's name (the outbox keeps it with each message).")
    url: str = Field(description="http(s) URL; for Alertmanager: http://HOST:9093/api/v2/alerts")
    format: Literal["json", "alertmanager"] = Field(
        "json",
        description="json: lmforge's event ({event, alert, monitor}); alertmanager: a list "
        "of alerts as Prometheus sends them to Alertmanager's /api/v2/alerts.",
    )
    secret_env: str | None = Field(
        None,
        description="Environment variable holding the HMAC-SHA256 key; each request then "
        "carries X-Lmforge-Signature: sha256=HMAC(key, timestamp + '.' + body).",
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    timeout: str = Field("5s", description="Per request.")
    max_attempts: int = Field(
        12, ge=1, le=100, description="Then the message is marked failed (kept, not deleted)."
    )
    backoff: str = Field("2s", description="First retry delay; doubles per attempt, up to 1h.")

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        return _http_url(value)

    @model_validator(mode="after")
    def _durations(self) -> WebhookSink:
        _check_durations(self, ("timeout", "backoff"), f"sinks.{self.name}")
        return self


SinkSpec = Annotated[LogSink | WebhookSink, Field(discriminator="kind")]


class ServiceConfig(ServeSettings):
    """``lmforge monitor run``: where it listens and how it guards itself, with the settings
    of ``lmforge serve`` (rate_limit, max_body_bytes, max_texts: documents per push, ...).
    API keys come from ``--api-key``, ``api_keys_file`` or ``$LMFORGE_API_KEYS``, never from
    the YAML file."""

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8080, ge=0, le=65535, description="Port (0: any free port).")
    api_keys_file: str | None = Field(None, description="A file of [NAME:]KEY lines.")
    allow_open: bool = Field(
        False, description="Listen on a non-loopback address without API keys (not advised)."
    )
    poll_interval: str = Field(
        "2s", description="How often followed files are read and quiet windows are judged."
    )

    @model_validator(mode="after")
    def _durations(self) -> ServiceConfig:
        _check_durations(self, ("poll_interval",), "service")
        return self


class MonitorConfig(_Strict):
    name: str = "monitor"
    build_dir: str = Field(
        "monitor-models",
        description="Where `lmforge monitor build` keeps the models it trains and exports "
        "(relative to the config), one folder per model and build settings.",
    )
    store: str = Field(
        "monitor.db",
        description="A SQLite file (relative to the config) or a SQLAlchemy URL, e.g. "
        "postgresql+psycopg://user:pass@host/db.",
    )
    models: Models
    sources: list[Source] = Field(default_factory=list)
    windows: list[str] = Field(default_factory=lambda: ["1h", "1d"])
    lateness: str = Field(
        "1h",
        description="How late a document may arrive before its window is judged ('0s': judge "
        "a window as soon as a later document arrives).",
    )
    rules: list[Rule] = Field(default_factory=list)
    sinks: list[SinkSpec] = Field(
        default_factory=lambda: [LogSink()], description="Where alerts go (default: the log)."
    )
    service: ServiceConfig = Field(
        default_factory=ServiceConfig, description="lmforge monitor run's HTTP service."
    )
    batch_size: int = Field(
        256,
        ge=1,
        le=4096,
        description="Documents classified and committed at once (two int8 models on 2 cores: "
        "172 docs/s at 64, 193 at 256, 204 at 1024; docs/monitor.md).",
    )
    forward_batch_size: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Texts per forward pass of a model (default: 8 on a CPU, where short "
        "length-sorted passes are twice as fast; the whole batch on a GPU).",
    )
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
        hooks = [sink.name for sink in self.sinks if isinstance(sink, WebhookSink)]
        if len(set(hooks)) != len(hooks):
            raise ValueError("sink names must be unique")
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


DEMO = "demo"  # the packaged demo config's name
DEMO_CONFIG = Path(__file__).parent / "data" / "demo.yaml"


def load_monitor_config(
    source: str | Path | dict[str, Any], overrides: list[str] | None = None
) -> MonitorConfig:
    """Read, override (``--set key=value``) and validate a monitor config; paths in it are
    relative to the config file. ``"demo"`` is the packaged demo, whose store and models go
    under ``monitor-demo/`` in the working directory."""
    demo = str(source) == DEMO and not Path(DEMO).exists()
    if demo:
        source = DEMO_CONFIG
    label = "config" if isinstance(source, dict) else str(source)
    data = (
        copy.deepcopy(source)
        if isinstance(source, dict)
        else read_yaml(source, needs="models.sentiment")
    )
    data = apply_overrides(data, overrides or [])
    if isinstance(data.get("service"), dict) and "keys" in data["service"]:
        raise LmforgeError(
            f"{label}: API keys are never written in the config; give service.api_keys_file, "
            "--api-key or $LMFORGE_API_KEYS"
        )
    try:
        cfg = MonitorConfig.model_validate(data)
    except ValidationError as err:
        raise LmforgeError(f"{label}: {format_validation_error(err, MonitorConfig)}") from None
    if not isinstance(source, dict):
        base = Path(source).resolve().parent
        _resolve_paths(cfg, base, outputs=Path.cwd() if demo else base)
    return cfg


def _resolve_paths(cfg: MonitorConfig, base: Path, outputs: Path) -> None:
    """A relative input path that does not exist from the working directory is taken from the
    config's folder (the rule of run configs); the store and build folder are under
    ``outputs``."""

    def resolve(path: str) -> str:
        return path if path == "default" else resolve_relative(path, base)

    for spec in (cfg.models.sentiment, cfg.models.topic):
        if spec is None:
            continue
        if spec.run:
            spec.run = resolve(spec.run)
        if spec.train:
            spec.train = resolve(spec.train)
    for source in cfg.sources:
        if isinstance(source, FileSource) and source.path != "-":
            source.path = resolve(source.path)
    if "://" not in cfg.store and not Path(cfg.store).is_absolute():
        cfg.store = os.path.normpath(outputs / cfg.store)
    if cfg.service.api_keys_file:
        cfg.service.api_keys_file = resolve(cfg.service.api_keys_file)
    if not Path(cfg.build_dir).is_absolute():
        cfg.build_dir = os.path.normpath(outputs / cfg.build_dir)
