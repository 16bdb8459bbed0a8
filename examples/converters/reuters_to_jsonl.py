"""Convert Reuters-21578 SGML to lmforge's JSONL: one news story per row with its topics.

    python examples/converters/reuters_to_jsonl.py \\
        ../shared/data/reuters21578 examples/data/reuters_r10.jsonl

A small, lenient reader (regular expressions, not an SGML parser): the files are ASCII with
stray control characters (``&#3;``) and unescaped text, which strict parsers reject. Writes
``{"text": title + body, "topics": [...], "split": LEWISSPLIT}`` for the stories whose
``TOPICS="YES"`` and that have at least one of the ten most frequent topics (the usual
"R10" subset: earn, acq, money-fx, grain, crude, trade, interest, ship, wheat, corn); other
topics are dropped from the label lists. Stories have one to several topics (grain + wheat
+ corn), so examples/reuters_multilabel.yaml trains a multi-label classifier.
"""

from __future__ import annotations

import html
import json
import re
import sys
from pathlib import Path

R10 = ("earn", "acq", "money-fx", "grain", "crude", "trade", "interest", "ship", "wheat", "corn")
STORY = re.compile(r"<REUTERS(?P<attrs>[^>]*)>(?P<body>.*?)</REUTERS>", re.S)
ATTR = re.compile(r'(\w+)="([^"]*)"')
FIELD = {
    name: re.compile(rf"<{name}>(.*?)</{name}>", re.S)
    for name in ("DATE", "TOPICS", "TITLE", "BODY")
}
TOPIC = re.compile(r"<D>(.*?)</D>")


def elements(sgm: str):
    """Each story as ``(attributes, fields)``: its ``<REUTERS>`` attributes (NEWID, TOPICS,
    LEWISSPLIT, ...) and the raw text of its DATE, TOPICS, TITLE and BODY elements (None where
    the element is absent). Shared with monitor_streams.py."""
    for match in STORY.finditer(sgm):
        fields = {
            name: (m.group(1) if (m := rx.search(match["body"])) else None)
            for name, rx in FIELD.items()
        }
        yield dict(ATTR.findall(match["attrs"])), fields


def clean(raw: str | None) -> str:
    """An element's text with the control-character references (``&#3;``) blanked and the
    entities (``&lt;``) unescaped."""
    return html.unescape(re.sub(r"&#\d+;", " ", raw or "")).strip()


def stories(sgm: str):
    for attrs, fields in elements(sgm):
        text = " ".join(clean(fields[k]) for k in ("TITLE", "BODY"))
        yield {
            "text": " ".join(text.split()),
            "topics": TOPIC.findall(fields["TOPICS"] or ""),
            "has_topics": attrs.get("TOPICS") == "YES",
            "split": attrs.get("LEWISSPLIT", ""),
        }


def convert(source_dir: Path, out: Path) -> tuple[int, int]:
    rows, seen = [], 0
    for path in sorted(source_dir.glob("reut2-*.sgm")):
        for story in stories(path.read_text(encoding="latin-1")):
            seen += 1
            topics = sorted(t for t in set(story["topics"]) if t in R10)
            if story["has_topics"] and topics and story["text"]:
                rows.append({"text": story["text"], "topics": topics, "split": story["split"]})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return seen, len(rows)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: reuters_to_jsonl.py REUTERS_DIR OUT.jsonl")
    seen, kept = convert(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"read {seen} stories, wrote {kept} with R10 topics to {sys.argv[2]}")
