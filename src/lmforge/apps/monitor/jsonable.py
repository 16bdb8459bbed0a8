"""Values as strict JSON: times in ISO 8601 UTC with a 'Z', infinite or NaN floats (an EWMA
score over a flat baseline is infinite) as the strings "inf", "-inf", "nan", which every JSON
parser reads (``json.dumps`` would write the invalid ``Infinity``)."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any


def iso(moment: datetime | None) -> str | None:
    """RFC 3339 in UTC with a 'Z' (what Alertmanager, browsers and the CLI's CSV use)."""
    if moment is None:
        return None
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def strict(value: Any) -> Any:
    """``value`` (dicts and lists walked) with times and non-finite floats as strings."""
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict(item) for item in value]
    return value
