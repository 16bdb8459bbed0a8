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

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmforge.errors import LmforgeError


class ServeConfig(BaseModel):
    """What ``lmforge serve`` serves, where, and how it guards itself (the keys of ``serve.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(
        default_factory=list, description="models to serve: PATH or NAME=PATH"
    )
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port (0: any free port)")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="PyTorch inference precision"
    )
    workers: int = Field(
        1, ge=1, le=64, description="server processes, each with its own copy of the models"
    )
    reload_interval: float = Field(
        0.0,
        ge=0,
        description="seconds between checks of the model directories for "
        "new weights (0: no hot reload)",
    )
    graceful_seconds: float = Field(
        30.0, ge=0, description="how long shutdown waits for in-flight requests"
    )
    api_keys_file: str | None = Field(None, description="a file of [NAME:]KEY lines")
    allow_open: bool = Field(False, description="listen on a non-loopback address without API keys")
    rate_limit: str | None = Field(None, description="requests per key, e.g. 600/minute")
    cors_origins: list[str] = Field(
        default_factory=list, description="origins browsers may call from"
    )
    mask_inputs: bool = Field(
        False, description="mask personal data in the texts before the model sees them"
    )
    max_body_bytes: int = Field(1_000_000, ge=1, description="larger bodies get 413")
    max_texts: int = Field(256, ge=1, description="texts (or prompts) per request at most")
    max_chars: int = Field(20_000, ge=1, description="characters per text at most")
    max_batch_size: int = Field(
        32, ge=1, description="texts gathered from concurrent requests into one model call"
    )
    forward_batch_size: int | None = Field(
        None,
        ge=1,
        description="texts per forward pass within a model call, "
        "length-sorted (default: 8 on a CPU, all on a GPU)",
    )
    model_threads: int | None = Field(
        None,
        ge=1,
        le=64,
        description="batches of a CPU model run at once, each "
        "with cores/model_threads PyTorch threads (default: the cores, at most 4)",
    )
    max_wait_ms: float = Field(
        5.0, ge=0, description="how long a request waits for others to batch with"
    )
    max_queue: int = Field(
        1024, ge=1, description="texts that may wait; beyond, 503 with Retry-After"
    )
    max_new_tokens: int = Field(
        512, ge=1, description="tokens one generation request may ask for at most"
    )
    max_generation_queue: int = Field(
        64, ge=1, description="generation requests that may wait per model"
    )

    def settings(self, keys: Any = None) -> Any:
        """The running service's :class:`~lmforge.serving.app.ServeSettings`, accepting ``keys``
        (:class:`~lmforge.serving.security.ApiKeys`; none: the service is open)."""
        from lmforge.serving.app import ServeSettings
        from lmforge.serving.security import ApiKeys, RateLimit

        return ServeSettings(
            keys=keys if keys is not None else ApiKeys(),
            rate_limit=RateLimit.parse(self.rate_limit) if self.rate_limit else None,
            max_body_bytes=self.max_body_bytes,
            max_texts=self.max_texts,
            max_chars=self.max_chars,
            mask_inputs=self.mask_inputs,
            cors_origins=list(self.cors_origins),
            max_batch_size=self.max_batch_size,
            forward_batch_size=self.forward_batch_size,
            model_threads=self.model_threads or 1,
            max_wait_ms=self.max_wait_ms,
            max_queue=self.max_queue,
            max_new_tokens=self.max_new_tokens,
            max_generation_queue=self.max_generation_queue,
            reload_interval=self.reload_interval,
        )


def default_of(key: str) -> Any:
    """A setting's default (for the flags' help)."""
    field = ServeConfig.model_fields[key]
    return field.get_default(call_default_factory=True)


def load_serve_config(path: str | None, flags: dict[str, Any]) -> ServeConfig:
    """``path``'s settings (if given) with ``flags`` (those not None) on top, validated."""
    from lmforge.config.errors import format_validation_error
    from lmforge.config.loader import read_yaml

    data: dict[str, Any] = read_yaml(path, needs="at least models:") if path else {}
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
