"""RSS and Atom feeds: one poll -> records, or the reason the poll gave nothing.

httpx fetches (with the source's timeout), feedparser parses (every RSS and Atom dialect,
dates included). Entries become records with the standard field names: ``id`` (the entry's
id, else its link), ``timestamp`` (published, else updated), ``title``, ``text`` (the summary
or content without its markup, else the title) and ``url``. A poll that fails (timeout, HTTP
error, a page that is not a feed) yields one unreadable record, so it is quarantined with
its reason and the next poll goes on.
"""

from __future__ import annotations

import calendar
import html
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import httpx

from lmforge.apps.monitor.config import FeedSource
from lmforge.apps.monitor.sources import Position, Record
from lmforge.apps.monitor.windows import parse_duration

TAG = re.compile(r"<[^>]+>")


def poll_feed(source: FeedSource, client: httpx.Client, poll: int) -> Iterator[Record]:
    """The entries of one poll (``poll``: its number, the position stored for the source)."""
    import feedparser

    position = Position(source.url, poll)
    timeout = parse_duration(source.timeout).total_seconds()
    try:
        response = client.get(source.url, timeout=timeout, follow_redirects=True)
        response.raise_for_status()
    except httpx.HTTPError as err:
        yield Record(source.name, position, None, f"feed poll failed: {type(err).__name__}: {err}")
        return
    parsed = feedparser.parse(response.content)
    if not parsed.entries and (parsed.bozo or not parsed.get("version")):
        kind = response.headers.get("content-type", "unknown content type")
        problem = parsed.get("bozo_exception") or "no feed entries"
        yield Record(
            source.name,
            position,
            None,
            f"feed poll: not an RSS/Atom feed ({kind}: {problem})",
            response.text[:2000],
        )
        return
    for entry in parsed.entries:
        yield Record(source.name, position, entry_fields(entry))


def entry_fields(entry: Any) -> dict[str, Any]:
    """A feed entry as a record with the standard field names."""
    parsed = entry.get("published_parsed") or entry.get("updated_parsed")
    moment = (
        datetime.fromtimestamp(calendar.timegm(parsed), tz=timezone.utc).isoformat()
        if parsed
        else entry.get("published") or entry.get("updated")
    )
    body = entry.get("summary") or ""
    if not body and entry.get("content"):
        body = entry["content"][0].get("value", "")
    text = " ".join(html.unescape(TAG.sub(" ", body)).split()) or entry.get("title", "")
    return {
        "id": entry.get("id") or entry.get("link"),
        "timestamp": moment,
        "title": entry.get("title"),
        "text": text,
        "url": entry.get("link"),
    }
