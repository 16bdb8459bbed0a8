"""Convert Reuters-21578 and the FOMC statements to document streams for ``lmforge monitor``.

    python examples/converters/monitor_streams.py ../shared/data examples/data/monitor

Writes two JSONL files to the output folder, one document per line, sorted by timestamp, then id:

- ``reuters.jsonl``: every Reuters story with a body, ``{"id": "reuters-<NEWID>", "timestamp":
  <DATE in ISO 8601 UTC>, "title", "text": the body with whitespace collapsed and the trailing
  "Reuter" sign-off and ``&#3;`` dropped, "topics": [...]}``. Read with the lenient reader of
  reuters_to_jsonl.py; the DATE (``26-FEB-1987 15:01:01.79``) has no zone and is taken as UTC,
  as the monitor does. Stories without a body, or whose date the monitor cannot parse, are
  skipped and counted.
- ``fomc.jsonl``: every statement and implementation note, ``{"id": "fomc-statement-YYYYMMDD" or
  "fomc-note-YYYYMMDD", "timestamp": the release date at 14:15 New York time, in UTC, "title",
  "text": the file with its 80-column lines unwrapped, paragraphs joined by a blank line}``.
  14:15 is the usual release time for most of the period, not the exact minute of every release.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from lmforge.apps.monitor.documents import Rejected, parse_timestamp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reuters_to_jsonl import TOPIC, clean, elements  # noqa: E402  (the same lenient SGML reader)

# The wire's sign-off, not part of the story: "... said.\n Reuter\n&#3;", also REUTER, REUTERS,
# REUTER... and REUTER...^M (sic), sometimes twice; "... told Reuters." is part of a sentence.
SIGN_OFF = re.compile(r"(?:\s*\bREUTERS?(?:\.\.\.)?(?:\^M)?)*\s*(?:&#3;)?\s*\Z", re.I)
NEW_YORK = ZoneInfo("America/New_York")
FOMC_FOLDERS = {
    "statements": ("statement", "FOMC statement"),
    "implementation_notes": ("note", "FOMC implementation note"),
}


def iso_utc(moment: datetime) -> str:
    """ISO 8601 with a ``Z``, milliseconds only where the source has them."""
    spec = "milliseconds" if moment.microsecond else "seconds"
    return moment.astimezone(timezone.utc).isoformat(timespec=spec).replace("+00:00", "Z")


def reuters_records(folder: Path) -> tuple[list[dict], Counter]:
    """The stories of ``folder/reut2-*.sgm`` with a body, and the skipped ones counted by reason."""
    rows, skipped = [], Counter()
    for path in sorted(folder.glob("reut2-*.sgm")):
        for attrs, fields in elements(path.read_text(encoding="latin-1")):
            text = " ".join(clean(SIGN_OFF.sub("", fields["BODY"] or "")).split())
            if not text:
                skipped["no body"] += 1
                continue
            try:
                moment = parse_timestamp(clean(fields["DATE"]))
            except Rejected:
                skipped["no or unparseable date"] += 1
                continue
            row = {
                "id": f"reuters-{attrs.get('NEWID', '')}",
                "timestamp": iso_utc(moment),
                "title": " ".join(clean(fields["TITLE"]).split()) or None,
                "text": text,
                "topics": TOPIC.findall(fields["TOPICS"] or ""),
            }
            rows.append((moment, row))
    return [row for _, row in sorted(rows, key=lambda r: (r[0], r[1]["id"]))], skipped


def unwrap(text: str) -> str:
    """Hard-wrapped lines joined into paragraphs; paragraphs stay apart by a blank line."""
    paragraphs = (" ".join(p.split()) for p in re.split(r"\n\s*\n", text))
    return "\n\n".join(p for p in paragraphs if p)


def fomc_records(folder: Path) -> tuple[list[dict], Counter]:
    """The statements and implementation notes (``YYYYMMDD.txt``; one statement is ``.xt``),
    and the count of skipped files by reason."""
    rows, skipped = [], Counter()
    for name, (kind, title) in FOMC_FOLDERS.items():
        for path in sorted(p for p in (folder / name).glob("*") if p.is_file()):
            try:
                day = datetime.strptime(path.stem, "%Y%m%d")
            except ValueError:
                skipped["name is not YYYYMMDD"] += 1
                continue
            text = unwrap(path.read_text(encoding="utf-8"))
            if not text:
                skipped["empty file"] += 1
                continue
            moment = day.replace(hour=14, minute=15, tzinfo=NEW_YORK)
            row = {
                "id": f"fomc-{kind}-{path.stem}",
                "timestamp": iso_utc(moment),
                "title": f"{title} {day:%Y-%m-%d}",
                "text": text,
            }
            rows.append((moment, row))
    return [row for _, row in sorted(rows, key=lambda r: (r[0], r[1]["id"]))], skipped


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )


def describe(skipped: Counter) -> str:
    reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
    return f"{sum(skipped.values())} skipped" + (f" ({reasons})" if reasons else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "shared", type=Path, help="the folder with reuters21578/ and fomc_statements/"
    )
    parser.add_argument("out", type=Path, help="where reuters.jsonl and fomc.jsonl are written")
    args = parser.parse_args(argv)
    reuters, fomc = args.shared / "reuters21578", args.shared / "fomc_statements"
    if not reuters.is_dir() or not fomc.is_dir():
        print(
            f"monitor_streams: {args.shared} needs reuters21578/ and fomc_statements/ "
            "(see their README.md)",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (rows, skipped) in {
        "reuters.jsonl": reuters_records(reuters),
        "fomc.jsonl": fomc_records(fomc),
    }.items():
        write_jsonl(rows, args.out / name)
        print(f"wrote {len(rows)} records to {args.out / name}, {describe(skipped)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
