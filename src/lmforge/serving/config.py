"""The service's configuration: a ``serve.yaml`` and the ``lmforge serve`` flags, validated at load.

Every setting has one name, used both as the YAML key and (with dashes) as the flag
(``max_batch_size`` / ``--max-batch-size``); a flag given on the command line overrides the file.
Unknown keys and out-of-range values are one-line errors naming the file and the key.

API keys are never written in the YAML file itself: give ``api_keys_file`` (a file of
``[NAME:]KEY`` lines), ``--api-key`` or ``$LMFORGE_API_KEYS``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lmforge.errors import LmforgeError
from lmforge.serving.security import ApiKeys, RateLimit


def _flag(group: str | None = None, **argparse_options: str) -> dict[str, Any]:
    """How a setting shows as a flag of ``lmforge serve`` (see :mod:`lmforge.config.flags`)."""
    return {"group": group, **argparse_options}


class ServeSettings(BaseModel):
    """How the service guards itself and batches: what :func:`~lmforge.serving.app.create_app`
    reads. ``keys`` come from ``--api-key``, a keys file or the environment, never from YAML."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    keys: ApiKeys = Field(default_factory=ApiKeys, exclude=True, repr=False)
    rate_limit: RateLimit | None = Field(
        None,
        description="requests per key, e.g. 600/minute (default: none)",
        json_schema_extra=_flag("access", metavar="N/PERIOD"),
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="allow browser calls from this origin (repeatable; default: CORS off)",
        json_schema_extra=_flag("access", flag="--cors-origin", metavar="ORIGIN"),
    )
    mask_inputs: bool = Field(
        False,
        description="mask e-mails, phone, card and account numbers, IDs in the texts before the "
        "model sees them (logs are always masked)",
        json_schema_extra=_flag("access"),
    )
    max_body_bytes: int = Field(
        1_000_000, ge=1, description="larger bodies get 413", json_schema_extra=_flag("limits")
    )
    max_texts: int = Field(
        256,
        ge=1,
        description="texts (or prompts) per request at most",
        json_schema_extra=_flag("limits"),
    )
    max_chars: int = Field(
        20_000, ge=1, description="characters per text at most", json_schema_extra=_flag("limits")
    )
    max_batch_size: int = Field(
        32,
        ge=1,
        description="texts gathered from concurrent requests into one model call",
        json_schema_extra=_flag("limits"),
    )
    forward_batch_size: int | None = Field(
        None,
        ge=1,
        description="texts per forward pass within it, length-sorted "
        "(default: 8 on a CPU, all on a GPU)",
        json_schema_extra=_flag("limits"),
    )
    model_threads: int | None = Field(
        None,
        ge=1,
        le=64,
        description="batches of a CPU model that run at once, each with cores/N PyTorch "
        "threads (default: the cores, at most 4)",
        json_schema_extra=_flag("limits"),
    )
    max_wait_ms: float = Field(
        5.0,
        ge=0,
        description="how long a request waits for others to batch with",
        json_schema_extra=_flag("limits"),
    )
    max_queue: int = Field(
        1024,
        ge=1,
        description="texts that may wait; beyond, 503 with Retry-After",
        json_schema_extra=_flag("limits"),
    )
    max_new_tokens: int = Field(
        512,
        ge=1,
        description="tokens one generation request may ask for at most",
        json_schema_extra=_flag("limits"),
    )
    max_generation_queue: int = Field(
        64,
        ge=1,
        description="generation requests that may wait per model; beyond, 503",
        json_schema_extra=_flag("limits"),
    )
    reload_interval: float = Field(
        0.0,
        ge=0,
        description="seconds between checks of the model directories for new weights, loaded "
        "without a restart; 0: off",
        json_schema_extra=_flag(metavar="SECONDS"),
    )

    @field_validator("rate_limit", mode="before")
    @classmethod
    def _parse_rate(cls, value: object) -> object:
        return RateLimit.parse(value) if isinstance(value, str) else value


class ServeConfig(ServeSettings):
    """What ``lmforge serve`` serves, where, and how it guards itself (the keys of
    ``serve.yaml``, and its flags)."""

    models: list[str] = Field(
        default_factory=list,
        description="models to serve: PATH or NAME=PATH",
        json_schema_extra=_flag(flag=""),  # the positional MODEL arguments
    )
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port (0: any free port)")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="PyTorch inference precision; auto: bf16 where the hardware has it"
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="server processes on the port, each with its own copy of the models",
    )
    graceful_seconds: float = Field(
        30.0, ge=0, description="how long shutdown waits for in-flight requests"
    )
    api_keys_file: str | None = Field(
        None, description="a file of [NAME:]KEY lines", json_schema_extra=_flag("access")
    )
    allow_open: bool = Field(
        False,
        description="listen on a non-loopback address without API keys (not advised)",
        json_schema_extra=_flag("access"),
    )

    def settings(self, keys: ApiKeys | None = None) -> ServeSettings:
        """The running service's settings, accepting ``keys`` (none: the service is open)."""
        fields = {name: getattr(self, name) for name in ServeSettings.model_fields}
        return ServeSettings(**{**fields, "keys": keys if keys is not None else ApiKeys()})


# Settings that are not YAML keys or flags of their own.
NOT_SETTINGS = ("keys",)


def setting_names() -> list[str]:
    """The keys of ``serve.yaml`` (and the flags, with dashes)."""
    own = [name for name in ServeConfig.model_fields if name not in ServeSettings.model_fields]
    return [*own, *(name for name in ServeSettings.model_fields if name not in NOT_SETTINGS)]


def load_serve_config(path: str | None, flags: dict[str, Any]) -> ServeConfig:
    """``path``'s settings (if given) with ``flags`` (those not None) on top, validated."""
    from lmforge.config.errors import format_validation_error
    from lmforge.config.loader import read_yaml

    data: dict[str, Any] = read_yaml(path, needs="at least models:") if path else {}
    if any(key in data for key in NOT_SETTINGS):
        raise LmforgeError(
            f"{path}: API keys are never written in the settings file; give api_keys_file, "
            "--api-key or $LMFORGE_API_KEYS"
        )
    given = {key: value for key, value in flags.items() if value is not None and value != []}
    source = f"{path} (with the flags)" if path and given else (path or "lmforge serve")
    if path and "models" in data and isinstance(data["models"], list):
        base = Path(path).parent  # paths in the file are relative to the file, as in run configs
        data["models"] = [_relative_to(str(spec), base) for spec in data["models"]]
    try:
        config = ServeConfig.model_validate({**data, **given})
    except ValidationError as err:
        raise LmforgeError(f"{source}: {format_validation_error(err, ServeConfig)}") from None
    if not config.models:
        raise LmforgeError(
            f"{source}: no models to serve; give MODEL arguments or a `models:` list"
        )
    return config


def _relative_to(spec: str, base: Path) -> str:
    name, sep, path = spec.rpartition("=")
    if Path(path).is_absolute() or not (base / path).exists():
        return spec  # absolute, a hub id, or resolved from the working directory
    return f"{name}{sep}{base / path}"
