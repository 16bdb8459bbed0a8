"""Window sizes written as Prometheus durations ("15m", "1h", "1d") and event-time buckets."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from lmforge.errors import LmforgeError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^(\d+)([smhdw])$")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse_duration(text: str, field: str = "duration", allow_zero: bool = False) -> timedelta:
    """``"1h"`` -> one hour; a one-line error naming ``field`` otherwise."""
    match = _DURATION.match(str(text).strip())
    if not match or (int(match.group(1)) == 0 and not allow_zero):
        raise LmforgeError(
            f"{field}: {text!r} is not a duration; write a positive number and a unit "
            "(s, m, h, d, w), e.g. 15m, 1h, 1d"
        )
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def window_start(moment: datetime, size: timedelta) -> datetime:
    """The start of the window of ``size`` that holds ``moment`` (windows aligned to the Unix
    epoch, UTC, as Prometheus and Grafana align them)."""
    seconds = int((moment - EPOCH).total_seconds() // size.total_seconds() * size.total_seconds())
    return EPOCH + timedelta(seconds=seconds)
