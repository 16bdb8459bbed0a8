"""``lmforge monitor report``: a store's trends and alerts as Markdown, PNG charts and JSON.

For readers without the dashboard (a weekly mail, a ticket, a review of an incident): one
folder with ``report.md``, a ``trends_<topic>.png`` per topic and ``report.json`` holding the
same numbers for scripts. Every number comes from :func:`queries.trends` and
:func:`queries.alerts`, so the report never disagrees with ``lmforge monitor trends`` and
``lmforge monitor alerts`` over the same range. ``report.json`` is strict JSON: an EWMA score
past a silent baseline is infinite, and is written as the string ``"inf"`` (as the CSV of
``lmforge monitor alerts`` writes it), not as ``Infinity``, which most parsers refuse.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lmforge.apps.monitor import queries, store
from lmforge.apps.monitor.config import MonitorConfig
from lmforge.apps.monitor.documents import ALL
from lmforge.apps.monitor.jsonable import iso, strict
from lmforge.errors import LmforgeError, did_you_mean
from lmforge.plots import pyplot

MAX_TOPICS = 12  # default charts: past a dozen they stop being read; name topics to see others
TEXT_CHARS = 200  # of each alert's top document
COMMAND = "lmforge monitor report CONFIG --output DIR"
ALERT_COLUMNS = (
    "rule", "topic", "metric", "window_start", "window_end", "fired_at", "state", "resolved_at",
    "value", "baseline", "score",
)  # fmt: skip
FIRING_COLOR = "#d62728"
RESOLVED_COLOR = "#a86868"  # grey-red: over, but it happened


def write_report(
    cfg: MonitorConfig,
    engine: Engine,
    output: Path,
    window: str | None = None,
    topics: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Path:
    """Write ``report.md``, ``report.json`` and ``trends_<topic>.png`` into ``output``.

    Args:
        cfg: the monitor's config (its name and windows).
        engine: the store, as :func:`store.open_store` returns it.
        output: the folder to write (created).
        window: one of ``cfg.windows`` (default: the first).
        topics: the topics to chart and tabulate (default: ``all`` and the biggest topics,
            at most :data:`MAX_TOPICS` in all, by volume); the alerts are those of these
            topics, or every alert by default.
        since: windows (and alerts) that start at or after this aware UTC time.
        until: windows (and alerts) that start before this time.

    Returns:
        The path of ``report.md``.

    Raises:
        LmforgeError: an unknown window or topic, a store without aggregates for the window,
            or a range that holds none of them.
    """
    output = Path(output)
    window, size = _check_window(cfg, window)
    url = engine.url.render_as_string(hide_password=True)
    rows = _trend_rows(engine, url, window, since, until)
    chosen, left_out = choose_topics(rows, topics)
    by_topic: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_topic[row["topic"]].append(row)
    start = min(row["window_start"] for row in rows)
    end = max(row["window_start"] for row in rows) + size
    alert_rows = [
        alert
        for alert in queries.alerts(engine, since=since, until=until)
        if not topics or alert["topic"] in chosen
    ]
    documents = _alert_documents(engine, [alert["id"] for alert in alert_rows])

    if output.exists() and not output.is_dir():
        raise LmforgeError(f"{output}: exists and is not a folder; name a folder")
    output.mkdir(parents=True, exist_ok=True)
    charts = {topic: chart_name(topic) for topic in chosen}
    for topic in chosen:
        plot_topic(
            by_topic[topic],
            [alert for alert in alert_rows if alert["topic"] == topic],
            size,
            (start, end),
            f"{cfg.name}: topic {topic}, {window} windows",
            output / charts[topic],
        )

    report = {
        "name": cfg.name,
        "store": url,
        "window": window,
        "range": {
            "start": iso(start),
            "end": iso(end),
            "windows": len({row["window_start"] for row in rows}),
            "since": iso(since),
            "until": iso(until),
        },
        "totals": sentiment_totals(by_topic.get(ALL, [])),
        "topics": [
            {"topic": topic, **summarize(by_topic[topic]), "chart": charts[topic]}
            for topic in chosen
        ],
        "topics_left_out": left_out,
        "alerts": [_alert_json(alert, documents.get(alert["id"], [])) for alert in alert_rows],
        "command": COMMAND,
        "generated_at": iso(datetime.now(timezone.utc).replace(microsecond=0)),
    }
    (output / "report.json").write_text(
        json.dumps(strict(report), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    path = output / "report.md"
    path.write_text(render_markdown(report), encoding="utf-8")
    return path


# --- what goes in --------------------------------------------------------------------------
def _check_window(cfg: MonitorConfig, window: str | None) -> tuple[str, timedelta]:
    window = window or cfg.windows[0]
    sizes = cfg.window_sizes()
    if window not in sizes:
        raise LmforgeError(
            f"window {window!r}: not one of the config's windows {cfg.windows}"
            + did_you_mean(window, cfg.windows)
        )
    return window, sizes[window]


def _trend_rows(
    engine: Engine, url: str, window: str, since: datetime | None, until: datetime | None
) -> list[dict[str, Any]]:
    """The window's trend rows in the range; an empty store and an empty range are told apart
    (the first needs a replay, the second other dates)."""
    table = store.aggregates.c
    with engine.connect() as connection:
        first, last = connection.execute(
            sa.select(sa.func.min(table.start), sa.func.max(table.start)).where(
                table.window == window
            )
        ).one()
    if first is None:
        raise LmforgeError(
            f"store {url} has no {window} aggregates; run `lmforge monitor replay CONFIG` first"
        )
    rows = queries.trends(engine, window, since=since, until=until)
    if not rows:
        raise LmforgeError(
            f"no {window} windows start from {iso(since) or 'the first'} to before "
            f"{iso(until) or 'the last'}; the store holds {iso(first)} to {iso(last)}"
        )
    return rows


def choose_topics(
    rows: Sequence[dict[str, Any]], topics: Sequence[str] | None
) -> tuple[list[str], list[str]]:
    """The topics to report and those left out: the ones asked for (each must have windows in
    the range), or by default the :data:`MAX_TOPICS` biggest by volume (``all`` first, as it
    holds every document), ties by name."""
    volume: dict[str, int] = defaultdict(int)
    for row in rows:
        volume[row["topic"]] += row["volume"]
    ranked = sorted(volume, key=lambda topic: (topic != ALL, -volume[topic], topic))
    if not topics:
        return ranked[:MAX_TOPICS], ranked[MAX_TOPICS:]
    chosen = list(dict.fromkeys(topics))  # in the order given, once each
    for topic in chosen:
        if topic not in volume:
            raise LmforgeError(
                f"topic {topic!r}: no windows in the range; topics: {', '.join(ranked[:20])}"
                + did_you_mean(topic, ranked)
            )
    return chosen, [topic for topic in ranked if topic not in chosen]


def _alert_documents(engine: Engine, alert_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """Each alert's top documents (as the pipeline kept them, most negative first): id,
    negative probability and the start of the text."""
    if not alert_ids:
        return {}
    a, d, p = store.alerts.c, store.documents.c, store.predictions.c
    with engine.connect() as connection:
        kept = {
            row.id: json.loads(row.documents)
            for row in connection.execute(sa.select(a.id, a.documents).where(a.id.in_(alert_ids)))
        }
        wanted = sorted({doc_id for ids in kept.values() for doc_id in ids})
        found: dict[str, dict[str, Any]] = {}
        for at in range(0, len(wanted), 500):  # stay under SQLite's bound-parameter limit
            query = (
                sa.select(d.id, d.text, p.negative)
                .outerjoin(store.predictions, p.document_id == d.id)
                .where(d.id.in_(wanted[at : at + 500]))
            )
            for row in connection.execute(query):
                found[row.id] = {
                    "id": row.id,
                    "negative": row.negative,
                    "text": _shorten(row.text, TEXT_CHARS),
                }
    return {
        alert_id: [
            found.get(doc_id, {"id": doc_id, "negative": None, "text": None}) for doc_id in ids
        ]
        for alert_id, ids in kept.items()
    }


# --- the numbers ---------------------------------------------------------------------------
def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Volume, counts, negative share and mean score of a topic over its windows (the mean
    score weights each window by its volume: the mean over documents, as in one window)."""
    volume = sum(row["volume"] for row in rows)
    negative = sum(row["negative"] for row in rows)
    score_sum = sum(row["mean_score"] * row["volume"] for row in rows)
    return {
        "volume": volume,
        "negative": negative,
        "positive": sum(row["positive"] for row in rows),
        "negative_share": negative / volume if volume else None,
        "mean_score": score_sum / volume if volume else None,
        "windows": len(rows),
    }


def sentiment_totals(all_rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Documents per sentiment, from topic ``all`` (each document counted once); ``other`` is
    every label that is neither the negative nor the positive one (neutral, usually)."""
    summary = summarize(all_rows)
    return {
        "documents": summary["volume"],
        "negative": summary["negative"],
        "positive": summary["positive"],
        "other": summary["volume"] - summary["negative"] - summary["positive"],
        "negative_share": summary["negative_share"],
        "mean_score": summary["mean_score"],
    }


def _alert_json(alert: dict[str, Any], documents: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("id", "rule", "topic", "metric", "window", *ALERT_COLUMNS[3:])
    row = {key: iso(alert[key]) if isinstance(alert[key], datetime) else alert[key] for key in keys}
    return {**row, "documents": documents}


# --- the charts ----------------------------------------------------------------------------
def chart_name(topic: str) -> str:
    """``trends_<topic>.png``, safe on every file system and in a Markdown link: a topic with
    other characters than lower-case letters, digits, ``.``, ``_`` and ``-`` gets a hash of its
    name appended, so that "M&A" and "M/A" (or "Oil" and "oil" on a case-insensitive file
    system) do not overwrite each other's chart."""
    safe = re.sub(r"[^a-z0-9._-]+", "_", topic.lower()).strip("._")[:60]
    if safe != topic or not safe:
        safe = f"{safe}-{hashlib.sha1(topic.encode()).hexdigest()[:8]}".lstrip("-")
    return f"trends_{safe}.png"


def plot_topic(
    rows: Sequence[dict[str, Any]],
    alerts: Sequence[dict[str, Any]],
    size: timedelta,
    span: tuple[datetime, datetime],
    title: str,
    path: Path,
) -> None:
    """Volume per window (bars) above negative share and mean score (lines), sharing a UTC
    time axis, with the topic's alerts as shaded spans; every chart spans the whole report
    range so that charts of different topics line up."""
    import matplotlib.dates as mdates
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    plt = pyplot()
    fig, (top, bottom) = plt.subplots(
        2, 1, sharex=True, figsize=(9, 5.5), gridspec_kw={"height_ratios": [1, 1.4]}
    )
    rows = sorted(rows, key=lambda row: row["window_start"])
    days = size / timedelta(days=1)  # matplotlib's date unit
    starts = [mdates.date2num(row["window_start"]) for row in rows]
    top.bar(starts, [row["volume"] for row in rows], width=days * 0.9, align="edge")
    top.set_ylabel("documents")
    top.yaxis.set_major_locator(MaxNLocator(integer=True))
    top.set_title(title)

    # Points at window middles, broken where windows are missing (no documents: no share).
    middles, shares, scores = [], [], []
    for k, row in enumerate(rows):
        if k and row["window_start"] - rows[k - 1]["window_start"] > size:
            middles.append(starts[k] - days / 2)
            shares.append(float("nan"))
            scores.append(float("nan"))
        middles.append(starts[k] + days / 2)
        shares.append(row["negative_share"])
        scores.append(row["mean_score"])
    (share_line,) = bottom.plot(
        middles, shares, "o-", color=FIRING_COLOR, ms=3, label="negative share"
    )
    bottom.set_ylim(-0.02, 1.02)
    bottom.yaxis.set_major_formatter(PercentFormatter(1.0))
    bottom.set_ylabel("negative share")
    score_axis = bottom.twinx()
    (score_line,) = score_axis.plot(
        middles, scores, "s--", color="#1f77b4", ms=3, label="mean score"
    )
    score_axis.set_ylim(-1.05, 1.05)
    score_axis.set_ylabel("mean score (positive - negative)")

    for alert in alerts:
        color = FIRING_COLOR if alert["state"] == "firing" else RESOLVED_COLOR
        for ax in (top, bottom):
            ax.axvspan(
                mdates.date2num(alert["window_start"]),
                mdates.date2num(alert["window_end"]),
                color=color,
                alpha=0.3,
                lw=0,
            )
    handles = [share_line, score_line]
    states = {alert["state"] for alert in alerts}
    if "firing" in states:
        handles.append(Patch(color=FIRING_COLOR, alpha=0.3, label="alert firing"))
    if states - {"firing"}:
        handles.append(Patch(color=RESOLVED_COLOR, alpha=0.3, label="alert resolved"))
    bottom.legend(handles=handles, loc="best", fontsize=8)

    locator = mdates.AutoDateLocator(tz=timezone.utc)
    bottom.xaxis.set_major_locator(locator)
    bottom.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=timezone.utc))
    bottom.set_xlim(mdates.date2num(span[0]), mdates.date2num(span[1]))
    bottom.set_xlabel("time (UTC)")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the Markdown --------------------------------------------------------------------------
def render_markdown(report: dict[str, Any]) -> str:
    """``report.md`` from the numbers of ``report.json`` (one source for both)."""
    span, totals = report["range"], report["totals"]
    asked = ", ".join(
        f"{name} {span[name]}" for name in ("since", "until") if span[name] is not None
    )
    parts = [
        f"# Monitor report: {_md(report['name'])}",
        "",
        f"Store `{report['store']}`: {span['windows']} windows of {report['window']} from "
        f"{span['start']} to {span['end']}" + (f" (asked: {asked})" if asked else "") + ".",
        "",
        "## Totals",
        "",
        "| | documents | share |",
        "|---|---:|---:|",
    ]
    for key in ("documents", "negative", "positive", "other"):
        parts.append(f"| {key} | {totals[key]} | {_share(totals[key], totals['documents'])} |")
    parts += ["", f"Mean score (positive - negative): {_number(totals['mean_score'])}.", ""]

    parts += [
        "## Topics",
        "",
        "| topic | volume | negative | negative share | mean score | alerts | chart |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["topics"]:
        count = sum(alert["topic"] == row["topic"] for alert in report["alerts"])
        parts.append(
            f"| {_md(row['topic'])} | {row['volume']} | {row['negative']} | "
            f"{_share(row['negative'], row['volume'])} | {_number(row['mean_score'])} | "
            f"{count} | [{row['chart']}]({row['chart']}) |"
        )
    if report["topics_left_out"]:
        parts += ["", f"{len(report['topics_left_out'])} more topics are not shown."]
    parts.append("")

    parts += _alert_sections(report["alerts"])

    parts += ["## Charts", ""]
    for row in report["topics"]:
        parts += [f"![{_md(row['topic'])}]({row['chart']})", ""]

    parts += [
        "## How this was made",
        "",
        f"`{report['command']}`, window {report['window']}"
        + (f", {asked}" if asked else "")
        + f", at {report['generated_at']}. The numbers are the store's aggregates, as "
        "`lmforge monitor trends` and `lmforge monitor alerts` list them; `report.json` holds "
        "them unrounded.",
        "",
    ]
    return "\n".join(parts)


def _alert_sections(alerts: Sequence[dict[str, Any]]) -> list[str]:
    parts = ["## Alerts", ""]
    if not alerts:
        return parts + ["No alert in this range.", ""]
    parts += ["| " + " | ".join(ALERT_COLUMNS) + " |", "|" + "---|" * len(ALERT_COLUMNS)]
    for alert in alerts:
        parts.append("| " + " | ".join(_md(_number(alert[key])) for key in ALERT_COLUMNS) + " |")
    parts.append("")
    for alert in alerts:
        if not alert["documents"]:
            continue
        parts += [
            f"### {_md(alert['rule'])} on {_md(alert['topic'])}, {alert['window_start']}",
            "",
            "| document | negative | text |",
            "|---|---:|---|",
        ]
        for doc in alert["documents"]:
            text = "(not in the store)" if doc["text"] is None else doc["text"]
            parts.append(f"| {_md(doc['id'])} | {_number(doc['negative'])} | {_md(text)} |")
        parts.append("")
    return parts


# --- formatting ----------------------------------------------------------------------------
def _number(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "–"


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _md(value: Any) -> str:
    """A table cell: one line, pipes escaped (a document's text is anything)."""
    return " ".join(str(value).split()).replace("|", "\\|")
