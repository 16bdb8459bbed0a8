"""Command-line flags made from a pydantic settings model, so that each setting is written once.

A field ``max_batch_size: int = Field(32, description=...)`` becomes ``--max-batch-size N`` with
the description as its help and the default shown; ``Literal`` fields get choices, ``bool``
fields are switches, list fields repeat. A field's ``json_schema_extra`` may say more:
``group`` (the argparse group it is listed under), ``flag`` (another flag name; ``""`` for no
flag, e.g. positional arguments) and ``metavar``.

Every flag defaults to ``None`` ("not given"), so that a settings file fills what the command
line leaves out (see :func:`given`).
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo


def add_flags(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    names: Sequence[str],
    groups: dict[str, str] | None = None,
) -> None:
    """Add a flag for each field of ``model`` in ``names``; ``groups`` titles the fields' groups
    (a field without a group, or with an unknown one, goes on ``parser`` itself)."""
    made: dict[str, argparse._ActionsContainer] = {}
    for name in names:
        field = model.model_fields[name]
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        flag = extra.get("flag", "--" + name.replace("_", "-"))
        if not flag:
            continue
        group = extra.get("group")
        if group and groups and group in groups:
            if group not in made:
                made[group] = parser.add_argument_group(groups[group])
            target: argparse._ActionsContainer = made[group]
        else:
            target = parser
        target.add_argument(flag, dest=name, default=None, **_argparse_options(field, extra))


def given(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The settings of ``model`` given on the command line (flags left out are absent)."""
    return {
        name: getattr(args, name)
        for name in model.model_fields
        if getattr(args, name, None) is not None
    }


def _argparse_options(field: FieldInfo, extra: dict[str, Any]) -> dict[str, Any]:
    kind = _without_none(field.annotation)
    options: dict[str, Any] = {"help": (field.description or "") + _shown_default(field)}
    if "metavar" in extra:
        options["metavar"] = extra["metavar"]
    if typing.get_origin(kind) is Literal:
        options["choices"] = list(typing.get_args(kind))
    elif kind is bool:
        options.update(action="store_const", const=True)
    elif typing.get_origin(kind) is list:
        options["action"] = "append"
    elif kind in (int, float):
        options["type"] = kind
    return options


def _without_none(annotation: Any) -> Any:
    """``int | None`` -> ``int``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _shown_default(field: FieldInfo) -> str:
    default = field.get_default(call_default_factory=True)
    if (
        default is None
        or default is False
        or default == []
        or "(default" in (field.description or "")
    ):
        return ""
    return f" (default {default:g})" if isinstance(default, float) else f" (default {default})"
