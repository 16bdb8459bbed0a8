"""Read labeled examples from CSV, TSV, JSONL, Parquet, delimited text lines or the HF hub.

Every reader returns a ``pandas.DataFrame`` of strings, and every failure (missing file,
wrong encoding, malformed line, missing column) is a one-line :class:`LmforgeError` that
names the file and the fix.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lmforge.errors import LmforgeError, did_you_mean

_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


# A file's kind by its extension: files of one kind are read alike (runs.reader_options_for).
_KINDS = {**_EXTENSIONS, ".txt": "text", "": "text", ".conll": "conll", ".bio": "conll"}


def file_kind(path: str | Path) -> str:
    """``csv``, ``tsv``, ``jsonl``, ``parquet``, ``text`` (``.txt`` or no extension), ``conll``,
    or the extension itself."""
    suffix = Path(path).suffix.lower()
    return _KINDS.get(suffix, suffix)


@dataclass(frozen=True)
class ReaderOptions:
    """How to read one file; mirrors the reading fields of ``DataConfig``.

    ``header=None`` detects the header: the first row is one when it names the text, label or
    pair column. ``from_flags`` makes errors name the command's flags (``--encoding``) rather
    than the config keys (``data.encoding``): the user is holding the flags.
    """

    format: str = "auto"
    delimiter: str | None = None
    header: bool | None = True
    encoding: str = "utf-8"
    text_column: str = "text"
    label_column: str | None = "label"
    text_pair_column: str | None = None
    negative_column: str | None = None
    from_flags: bool = False
    format_flag: str = "--format"

    def knob(self, key: str) -> str:
        """What the user sets to change ``key``: a flag or a config key."""
        if not self.from_flags:
            return f"data.{key}"
        return self.format_flag if key == "format" else f"--{key.replace('_', '-')}"

    def names_a_column(self, cells: list[str]) -> bool:
        """Whether a first row is a header: it names one of the columns read."""
        wanted = {self.text_column, self.label_column, self.text_pair_column}
        return any(cell.strip() in wanted for cell in cells if cell)


def read_examples(
    path: str | Path, opts: ReaderOptions, require_label: bool = True
) -> pd.DataFrame:
    """Read a file into a DataFrame with ``text`` (and ``label``) columns of strings.

    Args:
        path: The file to read.
        opts: Format, delimiter, header, encoding and column names.
        require_label: Fail when the label column is missing (False for prediction input).
    """
    path = Path(path)
    if not path.exists():
        raise LmforgeError(
            f"data file {path} not found; check data.train_file / --input "
            "(relative paths are resolved against the working directory, then the config)"
        )
    if path.is_dir():
        raise LmforgeError(
            f"{path} is a directory; give a data file (CSV, TSV, JSONL, Parquet or text)"
        )
    fmt = detect_format(path, opts)
    if fmt == "parquet":
        frame = _read_parquet(path, opts)
    else:
        text = decode_file(path, opts.encoding, opts.knob("encoding"))
        if not text.strip():
            raise LmforgeError(f"{path} is empty; it needs at least one example")
        if fmt == "jsonl":
            frame = _read_jsonl(path, text)
        elif fmt == "delimited":
            frame = _read_delimited(path, text, opts)
        else:
            frame = _read_csv(path, text, opts, "\t" if fmt == "tsv" else (opts.delimiter or ","))
    if frame.empty:
        raise LmforgeError(f"{path} has no rows; it needs at least one example")
    return _select_columns(path, frame, opts, require_label)


def detect_format(path: Path, opts: ReaderOptions) -> str:
    """The explicit format, else by extension, else by sniffing the first line."""
    if opts.format != "auto":
        return opts.format
    if path.suffix.lower() in _EXTENSIONS:
        fmt = _EXTENSIONS[path.suffix.lower()]
        return (
            "delimited"
            if fmt in ("csv", "tsv") and opts.delimiter and len(opts.delimiter) > 1
            else fmt
        )
    if opts.delimiter:
        return (
            "delimited"
            if opts.delimiter not in (",", "\t")
            else ("tsv" if opts.delimiter == "\t" else "csv")
        )
    with path.open("rb") as f:
        head = f.read(65536)
    lines = [line for line in head.removeprefix(b"\xef\xbb\xbf").splitlines() if line.strip()]
    first = lines[0].lstrip() if lines else b""
    if first.startswith(b"{"):
        return "jsonl"
    if b"\t" in first:
        return "tsv"
    if b"," in first:
        return "csv"
    raise LmforgeError(
        f"cannot tell the format of {path}; set {opts.knob('format')} (csv, tsv, jsonl, "
        f"parquet, delimited) and, for 'text@label' lines, {opts.knob('delimiter')}"
    )


def decode_file(path: Path, encoding: str, knob: str = "data.encoding") -> str:
    """Decode a whole file strictly; a wrong encoding is an error, never silent mojibake.
    ``knob`` is what the user sets to change the encoding (named in the error)."""
    raw = path.read_bytes()
    enc = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        text = raw.decode(enc)
    except LookupError:
        raise LmforgeError(
            f"{knob} '{encoding}' is not a known encoding; use e.g. utf-8 or latin-1"
        ) from None
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise LmforgeError(
            f"{path}: line {line} is not valid {encoding} (byte 0x{raw[err.start]:02x}); "
            + (
                f"pass the file's encoding, e.g. {knob} latin-1"
                if knob.startswith("--")
                else f"set {knob} to the file's encoding, e.g. latin-1"
            )
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_csv(path: Path, text: str, opts: ReaderOptions, sep: str) -> pd.DataFrame:
    try:
        frame = pd.read_csv(
            io.StringIO(text),
            sep=sep,
            header=0 if opts.header is True else None,
            dtype=str,
            keep_default_na=False,
            na_values=[],
            skip_blank_lines=True,
            quoting=csv.QUOTE_MINIMAL,
            engine="python" if len(sep) > 1 else "c",
        )
    except (pd.errors.ParserError, csv.Error) as err:
        raise LmforgeError(
            f"{path}: malformed {'TSV' if sep == chr(9) else 'CSV'}: "
            f"{str(err).strip().splitlines()[-1]}"
        ) from None
    except pd.errors.EmptyDataError:
        raise LmforgeError(f"{path} is empty; it needs at least one example") from None
    if opts.header is None and len(frame) and opts.names_a_column(list(frame.iloc[0])):
        frame.columns = [str(c) for c in frame.iloc[0]]
        return frame.iloc[1:].reset_index(drop=True)
    if not opts.header:
        frame.columns = _positional_names(frame.shape[1], opts)
    return frame


def _positional_names(n: int, opts: ReaderOptions) -> list[str]:
    """Without a header, two columns are (text, label); more are named by position 0, 1, ..."""
    if n == 2:
        return [opts.text_column, opts.label_column or "label"]
    return [str(i) for i in range(n)]


def _read_delimited(path: Path, text: str, opts: ReaderOptions) -> pd.DataFrame:
    """Lines of ``text<delim>label``, split at the last delimiter (texts may contain it)."""
    delim = opts.delimiter or "@"
    rows, bad = [], []
    lines = text.split("\n")
    header = opts.header
    if header is None:
        text_part, _, label = (lines[0] if lines else "").rpartition(delim)
        header = opts.names_a_column([text_part, label])
    start = 1 if header else 0
    for number, line in enumerate(lines[start:], start=start + 1):
        if not line.strip():
            continue
        text_part, sep, label = line.rpartition(delim)
        if not sep:
            bad.append(number)
            continue
        rows.append((text_part, label.strip()))
    if bad:
        raise LmforgeError(
            f"{path}: {len(bad)} line(s) have no '{delim}' delimiter (first: line {bad[0]}); "
            f"fix them or set {opts.knob('delimiter')}"
        )
    names = [opts.text_column, opts.label_column or "label"]
    if header and lines:
        head = lines[0].rpartition(delim)
        if head[1]:
            names = [head[0].strip(), head[2].strip()]
    return pd.DataFrame(rows, columns=names, dtype=str)


def _read_jsonl(path: Path, text: str) -> pd.DataFrame:
    stripped = text.lstrip()
    if stripped.startswith("["):  # a JSON array of objects (".json" files)
        try:
            records = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise LmforgeError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None
        except RecursionError:
            raise LmforgeError(f"{path}: JSON nested too deeply to be a list of records") from None
        lines = list(enumerate(records, start=1))
    else:
        lines = []
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                lines.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                raise LmforgeError(
                    f"{path}: line {number} is not valid JSON ({err.msg}); "
                    "JSONL needs one object per line"
                ) from None
            except RecursionError:
                raise LmforgeError(
                    f"{path}: line {number} is nested too deeply to be a record"
                ) from None
    for number, record in lines:
        if not isinstance(record, dict):
            raise LmforgeError(
                f"{path}: record {number} is a {type(record).__name__}, not an object; "
                'JSONL needs one {"text": ..., "label": ...} object per line'
            )
    # dtype=object: an integer label column with a gap must not turn into floats ('1.0').
    return pd.DataFrame([r for _, r in lines], dtype=object).map(as_text)


def _read_parquet(path: Path, opts: ReaderOptions) -> pd.DataFrame:
    try:
        import pyarrow.parquet as pq

        records = pq.read_table(path).to_pylist()  # Python values: nulls stay None, ints stay ints
    except Exception as err:  # pyarrow raises many types for a corrupt file
        raise LmforgeError(
            f"{path}: not a readable Parquet file ({type(err).__name__}); "
            f"check the file or set {opts.knob('format')}"
        ) from None
    return pd.DataFrame(records, dtype=object).map(as_text)


def as_text(value: object) -> str | None:
    """A cell as a string: None stays None (missing), lists and dicts become JSON."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        return value
    if hasattr(value, "tolist"):  # numpy arrays and scalars from Parquet
        value = value.tolist()
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def _select_columns(
    path: Path, frame: pd.DataFrame, opts: ReaderOptions, require_label: bool
) -> pd.DataFrame:
    columns = [str(c).strip() for c in frame.columns]
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise LmforgeError(
            f"{path} has duplicate column names {repeated}; rename them so each is unique"
        )
    frame.columns = columns
    wanted = {"text": opts.text_column}
    if opts.text_pair_column:
        wanted["text_pair"] = opts.text_pair_column
    if opts.negative_column:
        wanted["negative"] = opts.negative_column
    if opts.label_column and (require_label or opts.label_column in columns):
        wanted["label"] = opts.label_column
    for role, column in wanted.items():
        if column not in columns:
            raise LmforgeError(
                f"{path} has no {role} column '{column}'{did_you_mean(column, columns)}; "
                f"its columns are: {', '.join(columns[:20])}; set {opts.knob(role + '_column')}"
            )
    out = pd.DataFrame({role: frame[column] for role, column in wanted.items()})
    return out.astype(object).where(out.notna(), None)


def read_hf_dataset(
    name: str, config: str | None, split: str, opts: ReaderOptions, labeled: bool = True
) -> pd.DataFrame:
    """Load one split of a Hugging Face dataset (hub name or local path) as a DataFrame.

    Class-label features are turned into their names so that labels stay readable.
    """
    try:
        import datasets
    except ImportError:  # pragma: no cover - a core dependency
        raise LmforgeError(
            "reading data.hf_dataset needs the 'datasets' package: pip install datasets"
        ) from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LmforgeError(
            f"could not load Hugging Face dataset '{name}' split '{split}': {first}; "
            "check the name and split, or that the hub is reachable"
        ) from None
    label_feature = ds.features.get(opts.label_column) if opts.label_column else None
    frame = pd.DataFrame(ds.to_list(), columns=ds.column_names, dtype=object).map(as_text)
    if (
        label_feature is not None
        and hasattr(label_feature, "int2str")
        and opts.label_column in frame
    ):
        # ClassLabel ids to names; -1 marks an unlabeled row (e.g. GLUE test splits)
        frame[opts.label_column] = [
            None if v is None or int(v) < 0 else label_feature.int2str(int(v))
            for v in frame[opts.label_column]
        ]
    return _select_columns(Path(f"{name}[{split}]"), frame, opts, require_label=labeled)


def read_texts(source: str | Path, opts: ReaderOptions, flag: str = "--input") -> list[str]:
    """Texts to run a model on, from ``-`` (standard input) or a plain ``.txt`` file (a line
    each), else from the text column of a table (CSV, TSV, JSONL, Parquet, ``text@label``
    lines; ``opts`` says how to read it). Blank lines and empty texts are skipped and counted
    in a warning; no texts at all is an error. ``flag`` names the option in messages."""
    import logging
    import sys

    if str(source) == "-":
        rows = sys.stdin.read().splitlines()
    else:
        path = Path(source)
        if not path.is_file():
            raise LmforgeError(
                f"{flag} file {path} not found; give a file of texts (a line each, CSV, JSONL, "
                "or 'text@label' lines with --delimiter @), or - for standard input"
            )
        if path.suffix.lower() in (".txt", "") and opts.format == "auto" and not opts.delimiter:
            rows = decode_file(path, opts.encoding, opts.knob("encoding")).split("\n")
            if rows and not rows[-1].strip():
                rows.pop()  # the newline that ends the last line
        else:
            table = read_examples(path, opts, require_label=False)
            rows = [str(t) for t in table["text"].fillna("")]
    texts = [row.strip() for row in rows if row.strip()]
    if not texts:
        raise LmforgeError(f"no texts in {source}; give one text per line (or a text column)")
    if len(texts) < len(rows):
        logging.getLogger(__name__).warning(
            "skipped %d blank line(s) of %s; each output row carries its text",
            len(rows) - len(texts),
            source,
        )
    return texts
