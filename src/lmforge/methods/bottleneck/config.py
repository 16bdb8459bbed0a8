"""The settings of one bottleneck adapter: ``method: {name: adapter, ...}`` in a run config,
and the same fields in the ``adapter_config.json`` saved beside the adapter's weights."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lmforge.errors import LmforgeError, did_you_mean

# What adapter_config.json says besides the settings: the format and the base model.
ADAPTER_TYPE = "bottleneck"
CONFIG_NAME = "adapter_config.json"


class BottleneckConfig(BaseModel):
    """Options of ``method: {name: adapter, ...}``: one bottleneck adapter's settings."""

    model_config = ConfigDict(extra="forbid")

    # The field order is the key order of adapter_config.json files already saved.
    placement: Literal["pfeiffer", "houlsby"] = Field(
        "pfeiffer",
        description="pfeiffer: one adapter after each feed-forward block; houlsby: also one "
        "after each attention block (twice the parameters).",
    )
    reduction_factor: int = Field(
        16, ge=1, description="Bottleneck size = hidden size / reduction_factor (at least 1)."
    )
    non_linearity: Literal["relu", "gelu", "swish"] = Field(
        "relu", description="Activation inside the adapter."
    )
    target_modules: list[str] | None = Field(
        None,
        description="Regexes of the output projections to adapt; default: chosen per architecture.",
    )
    init_std: float = Field(
        1e-2,
        ge=0.0,
        allow_inf_nan=False,
        description="Standard deviation of the down-projection's initial weights.",
    )

    @field_validator("target_modules")
    @classmethod
    def _regexes(cls, patterns: list[str] | None) -> list[str] | None:
        if patterns is None:
            return None
        if not patterns:
            raise ValueError("is empty; leave it unset to use the architecture's defaults")
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"bad regex {pattern!r}: {err}") from None
        return patterns

    def to_dict(self) -> dict[str, Any]:
        """The settings as written to ``adapter_config.json``."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BottleneckConfig:
        """Read the settings of a saved ``adapter_config.json`` (its other keys removed).

        Raises:
            LmforgeError: An unknown key, or a value of the wrong type or range.
        """
        known = set(cls.model_fields)
        unknown = sorted(set(data) - known)
        if unknown:
            raise LmforgeError(
                f"unknown bottleneck adapter setting {unknown[0]!r}"
                f"{did_you_mean(unknown[0], known)}; known: {sorted(known)}"
            )
        try:
            return cls.model_validate(dict(data))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise LmforgeError(f"bad bottleneck adapter setting {where}: {first['msg']}") from None
