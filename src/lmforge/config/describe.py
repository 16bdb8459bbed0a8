"""``lmforge config``: every key of the run config with its type, default and description."""

from __future__ import annotations

import json

from pydantic import BaseModel


def describe_config(root: type[BaseModel]) -> str:
    """Every key with type, default and description (the field docstrings)."""
    from lmforge.methods.registry import METHOD_OPTIONS
    from lmforge.tasks.registry import TASK_NAMES

    lines = []
    for name, field in root.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and name != "method":
            lines.append(f"\n{name}:  # {field.description}")
            for key, sub in annotation.model_fields.items():
                default = sub.get_default(call_default_factory=True)
                lines.append(f"  {key}: {json.dumps(default)}  # {sub.description}")
        elif name == "method":
            lines.append(
                "\nmethod: full  # or a mapping {name: METHOD, ...options}; methods and options:"
            )
            for method, options in METHOD_OPTIONS.items():
                opts = ", ".join(
                    f"{k}={json.dumps(f.get_default())}" for k, f in options.model_fields.items()
                )
                lines.append(f"  # {method}: {opts or '(no options)'}")
        else:
            lines.append(f"{name}: {json.dumps(field.get_default())}  # {field.description}")
    lines.insert(0, f"# tasks: {', '.join(TASK_NAMES)}")
    return "\n".join(lines)
