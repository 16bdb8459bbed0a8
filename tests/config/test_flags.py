"""Flags made from pydantic settings (lmforge.config.flags), and `lmforge serve`'s use of them."""

from __future__ import annotations

import argparse
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from lmforge.config.flags import add_flags, given

pytestmark = pytest.mark.unit


class Settings(BaseModel):
    size: int = Field(32, description="rows per batch")
    wait: float = Field(5.0, description="seconds to wait")
    mode: Literal["fast", "exact"] = Field("fast", description="how")
    loud: bool = Field(False, description="say more", json_schema_extra={"group": "output"})
    tags: list[str] = Field(
        default_factory=list,
        description="a tag (repeatable)",
        json_schema_extra={"flag": "--tag", "metavar": "TAG"},
    )
    limit: int | None = Field(None, description="at most this many (default: all)")
    inputs: list[str] = Field(default_factory=list, json_schema_extra={"flag": ""})


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="x")
    add_flags(p, Settings, list(Settings.model_fields), groups={"output": "output"})
    return p


def test_each_field_is_one_typed_flag_and_only_given_ones_are_returned():
    args = parser().parse_args(["--size", "8", "--mode", "exact", "--tag", "a", "--tag", "b"])
    assert given(args, Settings) == {"size": 8, "mode": "exact", "tags": ["a", "b"]}
    args = parser().parse_args(["--wait", "0.5", "--loud", "--limit", "3"])
    assert given(args, Settings) == {"wait": 0.5, "loud": True, "limit": 3}
    assert Settings(**given(args, Settings)).limit == 3


def test_help_is_the_description_with_the_default_and_wrong_values_are_refused(capsys):
    text = parser().format_help()
    assert (
        "--size SIZE  rows per batch (default 32)" in " ".join(text.split()).replace("  ", " ")
        or "rows per batch (default 32)" in text
    )
    assert "seconds to wait (default 5)" in text
    assert "at most this many (default: all)" in text and "(default None)" not in text
    assert "output:" in text and "--tag TAG" in text and "--inputs" not in text
    for bad in (["--size", "many"], ["--mode", "slow"]):
        with pytest.raises(SystemExit):
            parser().parse_args(bad)
    assert "invalid choice: 'slow'" in capsys.readouterr().err


def test_serve_flags_are_the_settings_fields():
    from lmforge.cli import build_parser
    from lmforge.serving.config import ServeConfig, setting_names

    args = build_parser().parse_args(
        ["serve", "m", "--max-batch-size", "64", "--cors-origin", "https://a", "--mask-inputs"]
    )
    flags = given(args, ServeConfig)
    assert flags == {
        "models": ["m"],  # the positional MODEL arguments are the `models:` setting
        "max_batch_size": 64,
        "cors_origins": ["https://a"],
        "mask_inputs": True,
    }
    assert args.api_key == []
    assert "keys" not in setting_names() and "max_generation_queue" in setting_names()
    config = ServeConfig(**flags, rate_limit="5/second")
    settings = config.settings()
    assert (settings.max_batch_size, settings.rate_limit.requests, bool(settings.keys)) == (
        64,
        5,
        False,
    )
