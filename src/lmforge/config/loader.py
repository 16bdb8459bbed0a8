"""Load a YAML run config, apply ``--set`` overrides, validate, save the resolved copy."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lmforge.config.errors import format_validation_error
from lmforge.config.schema import RunConfig
from lmforge.errors import LmforgeError


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false are bools.

    YAML 1.1 (PyYAML's default) reads yes/no/on/off as booleans, so `eval_strategy: no`
    or a label named `no` would silently become False.
    """


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_yaml(text: str) -> Any:
    """Parse YAML text safely, with YAML 1.2 booleans."""
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: str | Path, needs: str = "at least data.train_file") -> dict[str, Any]:
    """Read a YAML mapping, with a one-line error for every way that can fail (``needs``: what
    the error for an empty file says a config needs)."""
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(
            f"config file {path} not found; pass the path of a YAML file "
            "(see examples/ for working configs)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise LmforgeError(
            f"{path}: config is not UTF-8 text ({err.reason} at byte {err.start})"
        ) from None
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise LmforgeError(f"{path}:{where}: invalid YAML: {problem}") from None
    except (ValueError, RecursionError) as err:  # PyYAML raises these for values like 2024-02-30
        raise LmforgeError(
            f"{path}: invalid YAML value: {err}; quote the value to keep it as text"
        ) from None
    if data is None:
        raise LmforgeError(f"{path} is empty; a config needs {needs}")
    if not isinstance(data, dict):
        raise LmforgeError(
            f"{path}: a config must be a mapping of keys (task:, model:, data:, ...), "
            f"not a {type(data).__name__}"
        )
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides; values are parsed as YAML (numbers, bools, lists)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise LmforgeError(f"--set {item!r}: expected KEY=VALUE, e.g. --set training.epochs=5")
        try:
            value = parse_yaml(raw) if raw.strip() else None
        except (yaml.YAMLError, ValueError, RecursionError):
            value = raw  # not valid YAML (e.g. 2024-02-30): keep the text as typed
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if isinstance(child, str) and part in ("model", "method"):
                child = {"name_or_path" if part == "model" else "name": child}
            if child is None:
                child = {}
            if not isinstance(child, dict):
                raise LmforgeError(f"--set {key}: '{part}' is a value, not a section")
            node[part] = child
            node = child
        node[parts[-1]] = value
    return data


def load_config(
    source: str | Path | dict[str, Any], overrides: list[str] | None = None
) -> RunConfig:
    """Read, override and validate a run config.

    Args:
        source: Path to a YAML file, or an already-parsed mapping.
        overrides: ``KEY=VALUE`` strings with dotted keys, applied before validation.

    Raises:
        LmforgeError: With one line naming the file, the key and the fix.
    """
    label = str(source) if not isinstance(source, dict) else "config"
    data = (
        copy.deepcopy(source) if isinstance(source, dict) else read_yaml(source)
    )  # never edit the caller's
    data = apply_overrides(data, overrides or [])
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as err:
        raise LmforgeError(f"{label}: {format_validation_error(err, RunConfig)}") from None
    if not isinstance(source, dict):
        cfg = _resolve_paths(cfg, Path(source).resolve().parent)
    return cfg


def _resolve_paths(cfg: RunConfig, base: Path) -> RunConfig:
    """Data paths in a config are relative to the config file, or to the working directory.

    The working directory wins when the file exists there (what users type at a shell);
    otherwise the path is taken relative to the config file (what examples/ rely on).
    """
    for key in ("train_file", "validation_file", "test_file"):
        value = getattr(cfg.data, key)
        if value:
            setattr(cfg.data, key, resolve_relative(value, base))
    template = cfg.data.chat_template
    if (
        template
        and is_template_file(template)
        and not Path(template).is_absolute()
        and not Path(template).exists()
        and (base / template).exists()
    ):
        cfg.data.chat_template = str(base / template)
    return cfg


def resolve_relative(path: str, base: Path) -> str:
    """``path`` as given when it is absolute or exists from the working directory (a file, or
    a glob that matches), else ``base / path`` when that exists, else as given (the error
    that follows names it as the user wrote it). The rule of every config's paths."""
    if Path(path).is_absolute() or _exists(path):
        return path
    candidate = str(base / path)
    return candidate if _exists(candidate) else path


def is_template_file(value: str) -> bool:
    """Whether ``data.chat_template`` names a file (not 'chatml', not a Jinja string)."""
    return value != "chatml" and "{{" not in value and "{%" not in value and "\n" not in value


def _exists(path: str) -> bool:
    """A file, or a glob (corpora: 'corpus/*.txt') that matches something."""
    import glob

    return Path(path).exists() or (glob.has_magic(path) and bool(glob.glob(path)))


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config (every default filled in) as YAML."""
    Path(path).write_text(
        yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), encoding="utf-8"
    )
