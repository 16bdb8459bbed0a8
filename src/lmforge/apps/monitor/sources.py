"""Records from files: JSONL or CSV, one file or a glob, read in name order.

Each record comes with its position (file, record number), which the store keeps per source in
the same transaction as the documents, so a restarted replay resumes after the last stored
batch instead of re-reading (documents are deduplicated either way).
"""

from __future__ import annotations

import csv
import glob
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from lmforge.apps.monitor.config import FileSource
from lmforge.errors import LmforgeError


@dataclass(frozen=True)
class Position:
    """Where a source has got to: the file and how many of its records are consumed."""

    file: str
    records: int


@dataclass(frozen=True)
class Record:
    source: str
    position: Position  # after this record
    fields: dict[str, Any] | None  # None: unreadable, see error
    error: str | None = None
    raw: str | None = None  # what was read, for the quarantine


def source_files(source: FileSource) -> list[Path]:
    """The files of a source, in name order; a one-line error when none match."""
    paths = (
        sorted(Path(p) for p in glob.glob(source.path))
        if glob.has_magic(source.path)
        else [Path(source.path)]
    )
    paths = [p for p in paths if p.is_file()]
    if not paths:
        raise LmforgeError(
            f"source {source.name}: no file matches {source.path}; fix sources[].path"
        )
    return paths


def file_format(source: FileSource, path: Path) -> str:
    if source.format != "auto":
        return source.format
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    raise LmforgeError(
        f"source {source.name}: cannot tell the format of {path.name} from its extension; "
        "set sources[].format to jsonl or csv"
    )


STDIN = "-"


def read_source(
    source: FileSource, after: Position | None = None, complete_lines: bool = False
) -> Iterator[Record]:
    """Every record of ``source`` after ``after`` (a stored position), in order.

    ``complete_lines``: stop at a last JSONL line without its newline (a file being written
    to, as ``follow`` reads it; the line is read once it is complete).
    """
    if source.path == STDIN:
        skip = after.records if after is not None else 0
        # The bytes under sys.stdin (a replaced text stream, as in tests: its lines encoded).
        handle = getattr(sys.stdin, "buffer", None) or (
            line.encode(source.encoding) for line in sys.stdin
        )
        yield from _jsonl_lines(source, handle, STDIN, skip, complete_lines)
        return
    for path in source_files(source):
        if after is not None and str(path) < after.file:
            continue
        skip = after.records if after is not None and str(path) == after.file else 0
        if file_format(source, path) == "jsonl":
            with path.open("rb") as handle:
                yield from _jsonl_lines(source, handle, str(path), skip, complete_lines)
        else:
            yield from _read_csv(source, path, skip)


def _jsonl_lines(
    source: FileSource,
    handle: BinaryIO | Iterable[bytes],
    name: str,
    skip: int,
    complete_lines: bool,
) -> Iterator[Record]:
    # Bytes, decoded per line: one badly encoded line is quarantined, the rest of the file read.
    count = 0
    for raw in handle:
        if complete_lines and not raw.endswith(b"\n"):
            return
        if not raw.strip():
            continue
        count += 1
        if count <= skip:
            continue
        position = Position(name, count)
        try:
            line = raw.decode(source.encoding)
        except UnicodeDecodeError as err:
            text = raw.decode(source.encoding, errors="replace")[:2000]
            yield Record(
                source.name,
                position,
                None,
                f"line {count} is not {source.encoding} ({err.reason} at byte {err.start})",
                text,
            )
            continue
        try:
            fields = json.loads(line)
        except json.JSONDecodeError as err:
            yield Record(
                source.name, position, None, f"line {count}: invalid JSON ({err.msg})", line
            )
            continue
        if not isinstance(fields, dict):
            yield Record(source.name, position, None, f"line {count}: not an object", line)
            continue
        yield Record(source.name, position, fields)


def _read_csv(source: FileSource, path: Path, skip: int) -> Iterator[Record]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(encoding=source.encoding, errors="strict", newline="") as handle:
        rows = csv.DictReader(handle, delimiter=delimiter)
        count = 0
        try:
            for row in rows:
                count += 1
                if count > skip:
                    yield Record(source.name, Position(str(path), count), dict(row))
        except UnicodeDecodeError as err:
            raise LmforgeError(
                f"source {source.name}: {path} is not {source.encoding} text after row {count} "
                f"({err.reason}); set sources[].encoding (e.g. latin-1)"
            ) from None
