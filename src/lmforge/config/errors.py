"""Turn pydantic validation errors into one readable line with the fix."""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

from lmforge.errors import did_you_mean


def _section_at(model_cls: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The config class that owns the key at ``loc`` (for listing valid keys)."""
    cls: object = model_cls
    for part in loc[:-1]:
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return None
        cls = field.annotation
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def format_validation_error(
    err: ValidationError, model_cls: type[BaseModel], prefix: str = ""
) -> str:
    """One line for every problem in a pydantic ``ValidationError``."""
    problems = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not str(p).startswith("function-"))
        dotted = ".".join(str(p) for p in ((prefix,) if prefix else ()) + loc)
        if e["type"] == "extra_forbidden":
            section = _section_at(model_cls, loc)
            valid = sorted(section.model_fields) if section else []
            hint = did_you_mean(str(loc[-1]), valid)
            where = f" in '{'.'.join(map(str, loc[:-1]))}'" if len(loc) > 1 else ""
            problems.append(f"unknown key '{dotted}'{hint}; valid keys{where}: {', '.join(valid)}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        shown = (
            "" if isinstance(got, dict | list) or e["type"] == "value_error" else f" (got {got!r})"
        )
        problems.append(f"{dotted}: {msg}{shown}" if dotted else f"{msg}{shown}")
    return "; ".join(problems)
