"""Pretraining corpora: stream documents from text, JSONL or CSV files into an on-disk token file.

A corpus may be larger than memory, so it is never loaded whole. It is read once, as a
stream (:func:`iter_documents`: file by file, line by line), tokenized in batches and
appended to a token file (:func:`write_token_file`):

- ``NAME.tokens``: every document's token ids, one flat raw ``uint32`` array;
- ``NAME.docs``: ``n_documents + 1`` raw ``int64`` offsets into it (document ``i`` is
  ``tokens[docs[i]:docs[i + 1]]``, its end-of-document token included);
- ``NAME.meta``: a small JSON file with the counts, the dtype and the tokenizer's fingerprint.

Training then reads fixed-size blocks through :class:`TokenFile`'s ``np.memmap``, so any
block is addressable by index (exact resume with an index-based sampler) and nothing is
loaded up front.

Memory bound: writing holds one batch of documents and their token ids (``batch_documents``
documents, or about ``_MAX_BATCH_CHARS`` characters when documents are long) plus one line
of input; a single document is always held whole. Reading holds nothing beyond the OS page
cache behind the memmap, which the kernel reclaims under pressure.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import glob
import gzip
import io
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import numpy as np

from lmforge.errors import LmforgeError, did_you_mean

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CorpusFormat = Literal["auto", "text", "jsonl", "csv"]
DocumentSplit = Literal["line", "blank_line"]

_EXTENSIONS = {
    "": "text",
    ".txt": "text",
    ".text": "text",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "csv",
}
_BINARY_PROBE = 8192  # bytes looked at for NUL bytes, as git and grep do
# Long documents (books) make a batch of 1000 huge; flushing at ~16M characters keeps the
# tokenizer's per-token bookkeeping (offsets, type ids: tens of bytes a token) to a few GB at most.
_MAX_BATCH_CHARS = 16_000_000
_TOKEN_DTYPE = np.dtype("<u4")
_OFFSET_DTYPE = np.dtype("<i8")
_META_FORMAT = "lmforge-token-file"
_META_VERSION = 1


@dataclass
class CorpusSpec:
    """Where a pretraining corpus lives and how its files split into documents."""

    sources: list[str]
    """File paths or glob patterns (``data/*.txt``, ``shards/**/*.jsonl.gz``), matches sorted."""
    format: CorpusFormat = "auto"
    """``text``, ``jsonl`` or ``csv``; ``auto`` decides by extension (``.gz`` is looked through)."""
    text_field: str = "text"
    """The JSONL key or CSV/TSV column that holds a document's text."""
    documents: DocumentSplit = "line"
    """Plain text: one document per ``line``, or documents between blank lines (``blank_line``)."""
    encoding: str = "utf-8"
    """The files' text encoding (a UTF-8 byte-order mark is skipped)."""


@dataclass
class CorpusStats:
    """What reading a corpus found; filled in while :func:`iter_documents` runs."""

    files: int = 0
    documents: int = 0
    empty_skipped: int = 0
    bytes_read: int = 0
    paths: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line, e.g. ``3 files, 1.2 MB: 10,412 documents (7 empty skipped)``."""
        return (
            f"{self.files:,} file{'s' if self.files != 1 else ''}, {self.bytes_read / 1e6:.1f} MB: "
            f"{self.documents:,} documents ({self.empty_skipped:,} empty skipped)"
        )


def iter_documents(spec: CorpusSpec, stats: CorpusStats | None = None) -> Iterator[str]:
    """Stream the documents of a corpus, file by file in sorted order, one line in memory at a time.

    Empty (whitespace-only) documents are skipped and counted in ``stats.empty_skipped``.

    Args:
        spec: The sources, format, text field, document split and encoding.
        stats: Filled in as documents are read (files, documents, skipped, bytes).

    Raises:
        LmforgeError: A pattern matching nothing, a binary or undecodable file, a bad JSONL
            line, a missing field or column, or a corpus without a single document.
    """
    stats = stats if stats is not None else CorpusStats()
    _check_spec(spec)
    paths = expand_sources(spec.sources)
    for path in paths:
        stats.files += 1
        stats.paths.append(str(path))
        yield from _read_file(path, spec, stats)
    if stats.documents == 0:
        raise LmforgeError(
            f"the corpus ({len(paths)} file(s) from {', '.join(spec.sources)}) has no "
            f"documents ({stats.empty_skipped} empty skipped); check the sources and "
            "the text field"
        )


def expand_sources(sources: Iterable[str]) -> list[Path]:
    """Files named by paths and glob patterns: each pattern's matches sorted, duplicates dropped."""
    paths: dict[Path, Path] = {}  # resolved path -> path as given, in first-seen order
    sources = list(sources)
    if not sources:
        raise LmforgeError("the corpus has no sources; give at least one file or glob pattern")
    for source in sources:
        if any(c in source for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(source), recursive=True))
            files = [m for m in matches if m.is_file()]
            if not files:
                raise LmforgeError(
                    f"corpus pattern {source!r} matches no files; check the path "
                    "(relative patterns are resolved against the working directory)"
                )
        else:
            path = Path(source).expanduser()
            if path.is_dir():
                raise LmforgeError(
                    f"corpus source {source} is a directory; give a glob such as '{path / '*.txt'}'"
                )
            if not path.is_file():
                raise LmforgeError(
                    f"corpus file {source} not found; check the path (relative paths are "
                    "resolved against the working directory)"
                )
            files = [path]
        for file in files:
            paths.setdefault(file.resolve(), file)
    return list(paths.values())


def _check_spec(spec: CorpusSpec) -> None:
    if spec.format not in ("auto", "text", "jsonl", "csv"):
        raise LmforgeError(f"unknown corpus format {spec.format!r}; use auto, text, jsonl or csv")
    if spec.documents not in ("line", "blank_line"):
        raise LmforgeError(f"unknown document split {spec.documents!r}; use line or blank_line")
    try:
        codecs.lookup(spec.encoding)
    except LookupError:
        raise LmforgeError(
            f"corpus encoding {spec.encoding!r} is not a known encoding; use e.g. utf-8 or latin-1"
        ) from None


def file_format(path: Path, spec_format: str = "auto") -> str:
    """``text``, ``jsonl`` or ``csv``: as given, else by extension (``a.jsonl.gz`` is JSONL)."""
    if spec_format != "auto":
        return spec_format
    suffix = _suffix(path)
    if suffix not in _EXTENSIONS:
        raise LmforgeError(
            f"cannot tell the format of {path} from its extension {suffix!r}; set the corpus "
            "format (text, jsonl or csv)"
        )
    return _EXTENSIONS[suffix]


def _suffix(path: Path) -> str:
    """The lower-case extension, looking through ``.gz``: ``.jsonl`` for ``part-1.jsonl.gz``."""
    name = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
    return Path(name).suffix.lower()


def _read_file(path: Path, spec: CorpusSpec, stats: CorpusStats) -> Iterator[str]:
    fmt = file_format(path, spec.format)
    with _open_binary(path) as raw:
        if _ascii_compatible(spec.encoding):  # UTF-16/32 text is full of NUL bytes
            head = raw.read(_BINARY_PROBE)
            if b"\x00" in head:
                raise LmforgeError(
                    f"{path} looks binary (NUL bytes in its first 8 KiB); give text, JSONL or "
                    "CSV files (or set the corpus encoding for UTF-16/32 text)"
                )
            raw.seek(0)
        lines = _decoded_lines(raw, path, spec.encoding)
        if fmt == "jsonl":
            yield from _jsonl_documents(lines, path, spec.text_field, stats)
        elif fmt == "csv":
            yield from _csv_documents(lines, path, spec.text_field, stats)
        else:
            yield from _text_documents(lines, spec.documents, stats)
        stats.bytes_read += raw.tell()  # of the decompressed text, for .gz


@contextlib.contextmanager
def _open_binary(path: Path) -> Iterator[IO[bytes]]:
    """The file's bytes (decompressed for ``.gz``), with gzip damage reported as a user error."""
    try:
        with path.open("rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
    except OSError as err:
        raise LmforgeError(f"cannot read corpus file {path}: {err.strerror}") from None
    try:
        with gzip.open(path, "rb") if gzipped else path.open("rb") as f:
            yield f
    except (gzip.BadGzipFile, EOFError, OSError) as err:
        if not gzipped:
            raise
        raise LmforgeError(
            f"{path} is a damaged gzip file ({type(err).__name__}: {err}); "
            "re-download or re-compress it"
        ) from None


def _is_utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")


def _ascii_compatible(encoding: str) -> bool:
    """Whether a newline is the single byte 0x0a, so lines can be split before decoding
    (true of UTF-8, Latin-1, cp1252, ...; not of UTF-16/32)."""
    return _is_utf8(encoding) or ("\n".encode(encoding) == b"\n" and "a".encode(encoding) == b"a")


def _decoded_lines(raw: IO[bytes], path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """``(line number, line with its ending)``, decoded strictly; a CRLF ending becomes LF.

    ASCII-compatible encodings are split into lines as bytes and decoded one line at a time,
    so an error names the exact line; UTF-16/32 go through a streaming ``TextIOWrapper``.
    """
    if not _ascii_compatible(encoding):
        yield from _wrapped_lines(raw, path, encoding)
        return
    # utf-8-sig: a byte-order mark (Windows tools write one) is dropped, not kept as text.
    decoder = codecs.getincrementaldecoder("utf-8-sig" if _is_utf8(encoding) else encoding)(
        "strict"
    )
    for number, line in enumerate(raw, start=1):
        try:
            text = decoder.decode(line)
        except UnicodeDecodeError as err:
            raise LmforgeError(
                f"{path}: line {number} is not valid {encoding} (byte 0x{line[err.start]:02x}); "
                "set the corpus encoding to the file's encoding, e.g. latin-1"
            ) from None
        if text.endswith("\r\n"):
            text = text[:-2] + "\n"
        # A lone CR (old Mac line ending) is left inside the line: splitting on it would cut
        # CSV cells and JSON strings that legitimately contain one.
        yield number, text


def _wrapped_lines(raw: IO[bytes], path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """Lines of UTF-16/32 text; the wrapper decodes ahead, so an error's line is approximate."""
    wrapper = io.TextIOWrapper(raw, encoding=encoding, newline=None)
    number = 0
    try:
        for number, line in enumerate(wrapper, start=1):  # noqa: B007 (read in the except clause)
            yield number, line
    except UnicodeDecodeError:
        raise LmforgeError(
            f"{path}: text at or after line {number + 1} is not valid {encoding}; set the corpus "
            "encoding to the file's encoding"
        ) from None
    finally:
        wrapper.detach()  # the caller closes the file (and reads its position)


def _text_documents(
    lines: Iterator[tuple[int, str]], split: str, stats: CorpusStats
) -> Iterator[str]:
    if split == "line":
        for _, line in lines:
            line = line.rstrip("\n")
            if line.strip():
                stats.documents += 1
                yield line
            else:
                stats.empty_skipped += 1
        return
    document: list[str] = []
    for _, line in lines:
        if line.strip():
            document.append(line.rstrip("\n"))
        elif document:
            stats.documents += 1
            yield "\n".join(document)
            document = []
    if document:
        stats.documents += 1
        yield "\n".join(document)


def _jsonl_documents(
    lines: Iterator[tuple[int, str]], path: Path, text_field: str, stats: CorpusStats
) -> Iterator[str]:
    for number, line in lines:
        if not line.strip():
            continue  # blank lines separate nothing in JSONL; they are not records
        # A .json file holding one JSON array cannot be streamed record by record.
        array = (
            " (the file looks like a JSON array: convert it, e.g. jq -c '.[]')"
            if number == 1 and line.lstrip().startswith("[")
            else ""
        )
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise LmforgeError(
                f"{path}: line {number} is not valid JSON ({err.msg}){array}; JSONL needs "
                f'one {{"{text_field}": "..."}} object per line'
            ) from None
        except RecursionError:
            raise LmforgeError(
                f"{path}: line {number} is nested too deeply to be a record"
            ) from None
        if not isinstance(record, dict):
            raise LmforgeError(
                f"{path}: line {number} is a JSON {type(record).__name__}, not an object{array}; "
                f'JSONL needs one {{"{text_field}": "..."}} object per line'
            )
        if text_field not in record:
            fields = ", ".join(map(repr, list(record)[:10])) + (", ..." if len(record) > 10 else "")
            raise LmforgeError(
                f"{path}: line {number} has no field {text_field!r}"
                f"{did_you_mean(text_field, record)} (it has {fields or 'none'}); "
                "set the corpus text field"
            )
        text = record[text_field]
        if text is not None and not isinstance(text, str):
            raise LmforgeError(
                f"{path}: line {number} field {text_field!r} is a {type(text).__name__}, "
                "not a string"
            )
        if text is None or not text.strip():
            stats.empty_skipped += 1
            continue
        stats.documents += 1
        yield text


@contextlib.contextmanager
def _large_csv_fields() -> Iterator[None]:
    """Allow cells of any size while reading: the csv module's default cap is 128 KiB, and a
    pretraining document (a whole article) is often longer."""
    previous = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a C long on every platform
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _csv_documents(
    lines: Iterator[tuple[int, str]], path: Path, text_field: str, stats: CorpusStats
) -> Iterator[str]:
    delimiter = "\t" if _suffix(path) == ".tsv" else ","
    kind = "TSV" if delimiter == "\t" else "CSV"
    line_numbers = [0]

    def physical_lines() -> Iterator[str]:
        for number, line in lines:
            line_numbers[0] = number
            yield line

    with _large_csv_fields():
        reader = csv.reader(physical_lines(), delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                return  # an empty file: no documents, and iter_documents says so if all are
            if text_field not in header:
                raise LmforgeError(
                    f"{path}: no column {text_field!r}{did_you_mean(text_field, header)}; "
                    f"the header has {', '.join(map(repr, header))}; set the corpus text field"
                )
            column = header.index(text_field)
            for row in reader:
                if not row:
                    continue  # a blank line
                if len(row) <= column:
                    raise LmforgeError(
                        f"{path}: line {line_numbers[0]} has {len(row)} {kind} field(s), too few "
                        f"for column {text_field!r} (number {column + 1} in the header)"
                    )
                text = row[column]
                if not text.strip():
                    stats.empty_skipped += 1
                    continue
                stats.documents += 1
                yield text
        except csv.Error as err:
            raise LmforgeError(
                f"{path}: malformed {kind} near line {line_numbers[0]}: {err}"
            ) from None


def tokenizer_eos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id that ends a document: the tokenizer's end-of-sequence token, else its separator."""
    for name in ("eos_token_id", "sep_token_id"):
        token_id = getattr(tokenizer, name, None)
        if token_id is not None:
            return int(token_id)
    raise LmforgeError(
        "the tokenizer has neither an eos nor a sep token to end documents with; "
        "add one (e.g. tokenizer.add_special_tokens({'eos_token': '<|endoftext|>'})) "
        "or turn off append_eos"
    )


@dataclass(eq=False, repr=False)
class TokenFile:
    """A written token file, memory-mapped read-only: ``tokens[doc_offsets[i]:doc_offsets[i + 1]]``
    is document ``i`` (with its end-of-document token when the file was written with one)."""

    path: Path
    tokens: np.ndarray
    doc_offsets: np.ndarray
    meta: dict[str, Any]

    def __repr__(self) -> str:
        return (
            f"TokenFile({str(self.path)!r}, n_documents={self.n_documents}, "
            f"n_tokens={self.n_tokens})"
        )

    @property
    def n_tokens(self) -> int:
        return int(self.doc_offsets[-1])

    @property
    def n_documents(self) -> int:
        return len(self.doc_offsets) - 1

    @property
    def eos_token_id(self) -> int | None:
        return self.meta.get("eos_token_id")

    def document(self, i: int) -> np.ndarray:
        """Token ids of document ``i`` (a read-only view into the memmap)."""
        if not -self.n_documents <= i < self.n_documents:
            raise IndexError(f"document {i} out of range (the token file has {self.n_documents})")
        i %= self.n_documents
        return self.tokens[self.doc_offsets[i] : self.doc_offsets[i + 1]]

    @staticmethod
    def paths(path: str | Path) -> tuple[Path, Path, Path]:
        """The ``.tokens``, ``.docs`` and ``.meta`` files of ``path``.

        ``out/wiki`` and ``out/wiki.tokens`` both mean ``out/wiki.tokens``; any other suffix is
        kept (``train.en`` gives ``train.en.tokens``), so ``train.en`` and ``train.de`` do not
        overwrite each other as they would with ``Path.with_suffix``.
        """
        path = Path(path)
        stem = path.with_suffix("") if path.suffix in (".tokens", ".docs", ".meta") else path
        name = stem.name
        return (
            stem.with_name(f"{name}.tokens"),
            stem.with_name(f"{name}.docs"),
            stem.with_name(f"{name}.meta"),
        )

    @classmethod
    def open(cls, path: str | Path) -> TokenFile:
        """Map a token file from :func:`write_token_file`, its sizes checked against its meta."""
        tokens_path, docs_path, meta_path = cls.paths(path)
        rebuild = (
            f"delete {tokens_path.with_name(tokens_path.name[:-7])}.tokens/.docs/.meta and rebuild"
        )
        if not meta_path.is_file():
            raise LmforgeError(
                f"no token file at {tokens_path} ({meta_path.name} is missing, so it was never "
                "finished); build it again"
            )
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            n_tokens, n_documents = int(meta["n_tokens"]), int(meta["n_documents"])
            ok = meta.get("format") == _META_FORMAT and meta.get("dtype") == "uint32"
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise LmforgeError(f"{meta_path} is not an lmforge token-file description; {rebuild}")
        expected = {
            tokens_path: n_tokens * _TOKEN_DTYPE.itemsize,
            docs_path: (n_documents + 1) * _OFFSET_DTYPE.itemsize,
        }
        for file, size in expected.items():
            actual = file.stat().st_size if file.is_file() else None
            if actual != size:
                found = "missing" if actual is None else f"{actual:,} bytes"
                raise LmforgeError(
                    f"token file {file} is corrupt or truncated ({found}, expected {size:,} from "
                    f"{meta_path.name}); {rebuild}"
                )
        offsets = np.memmap(docs_path, dtype=_OFFSET_DTYPE, mode="r")
        if offsets[0] != 0 or offsets[-1] != n_tokens:
            raise LmforgeError(
                f"token file {docs_path} is corrupt (its offsets do not span the "
                f"{n_tokens:,} tokens); {rebuild}"
            )
        # np.memmap cannot map an empty file; an empty token file has nothing to map.
        tokens = (
            np.memmap(tokens_path, dtype=_TOKEN_DTYPE, mode="r")
            if n_tokens
            else np.zeros(0, dtype=_TOKEN_DTYPE)
        )
        return cls(tokens_path, tokens, offsets, meta)

    def check_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Fail unless ``tokenizer`` wrote the file (another one reads its ids as other tokens)."""
        from lmforge.data.tokenization import tokenizer_fingerprint

        expected = self.meta.get("tokenizer_fingerprint")
        if expected is not None and tokenizer_fingerprint(tokenizer) != expected:
            raise LmforgeError(
                f"token file {self.path} was written with another tokenizer "
                f"({self.meta.get('tokenizer_name') or 'unnamed'}); rebuild it with this one"
            )


def write_token_file(
    documents: Iterable[str],
    tokenizer: PreTrainedTokenizerBase,
    path: str | Path,
    batch_documents: int = 1000,
    append_eos: bool = True,
    progress: bool = True,
) -> TokenFile:
    """Tokenize a stream of documents in batches and append them to an on-disk token file.

    The three files are written under temporary names and renamed when complete, the
    ``.meta`` last, so an interrupted run leaves no token file that looks finished.

    Args:
        documents: The documents, e.g. :func:`iter_documents`; consumed once.
        tokenizer: A Hugging Face tokenizer; ids are taken without special tokens.
        path: Where to write: ``out/wiki`` (or ``out/wiki.tokens``) writes ``out/wiki.tokens``,
            ``out/wiki.docs`` and ``out/wiki.meta``.
        batch_documents: Documents tokenized at a time: the memory bound of writing.
        append_eos: End every document with the eos (else sep) token, so that documents
            packed into one block stay separated.
        progress: Show a bar counting documents.

    Returns:
        The written file, opened.
    """
    from tqdm.auto import tqdm

    from lmforge.data.tokenization import tokenizer_fingerprint, tokenizer_threads

    if batch_documents < 1:
        raise LmforgeError(f"batch_documents must be at least 1, not {batch_documents}")
    eos = tokenizer_eos_id(tokenizer) if append_eos else None
    final_paths = TokenFile.paths(path)
    final_paths[0].parent.mkdir(parents=True, exist_ok=True)
    temp_paths = [p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in final_paths]
    n_tokens = n_documents = 0
    try:
        with (
            open(temp_paths[0], "wb") as tokens_out,
            open(temp_paths[1], "wb") as docs_out,
            tqdm(desc="tokenize", unit="doc", disable=not progress, dynamic_ncols=True) as bar,
        ):
            docs_out.write(np.zeros(1, dtype=_OFFSET_DTYPE).tobytes())
            for batch in _batches(documents, batch_documents):
                with tokenizer_threads():
                    # verbose=False: documents longer than model_max_length are expected (training
                    # cuts blocks), so the "sequence length is longer than" warning would mislead.
                    ids = tokenizer(
                        batch, add_special_tokens=False, return_attention_mask=False, verbose=False
                    )["input_ids"]
                lengths = np.fromiter(
                    (len(row) + (eos is not None) for row in ids),
                    dtype=_OFFSET_DTYPE,
                    count=len(ids),
                )
                flat = np.empty(int(lengths.sum()), dtype=_TOKEN_DTYPE)
                start = 0
                for row, length in zip(ids, lengths.tolist(), strict=True):
                    flat[start : start + len(row)] = row
                    if eos is not None:
                        flat[start + length - 1] = eos
                    start += length
                tokens_out.write(flat.tobytes())
                docs_out.write((n_tokens + np.cumsum(lengths)).astype(_OFFSET_DTYPE).tobytes())
                n_tokens += len(flat)
                n_documents += len(batch)
                bar.update(len(batch))
        if n_documents == 0:
            raise LmforgeError(f"no documents to write to {final_paths[0]}; the corpus is empty")
        if n_tokens == 0:
            raise LmforgeError(
                f"the {n_documents:,} documents for {final_paths[0]} produced no tokens; "
                "check the tokenizer and the text, or turn on append_eos"
            )
        meta = {
            "format": _META_FORMAT,
            "version": _META_VERSION,
            "dtype": "uint32",
            "offsets_dtype": "int64",
            "n_tokens": n_tokens,
            "n_documents": n_documents,
            "append_eos": append_eos,
            "eos_token_id": eos,
            "vocab_size": len(tokenizer),
            "tokenizer_name": getattr(tokenizer, "name_or_path", None) or None,
            "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        }
        temp_paths[2].write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        # Remove the old meta first: until the new one lands, no half-replaced file set looks valid.
        final_paths[2].unlink(missing_ok=True)
        for temp, final in zip(temp_paths, final_paths, strict=True):
            os.replace(temp, final)
    finally:
        for temp in temp_paths:
            temp.unlink(missing_ok=True)
    return TokenFile.open(path)


def _batches(documents: Iterable[str], size: int) -> Iterator[list[str]]:
    """Lists of up to ``size`` documents, cut early at ``_MAX_BATCH_CHARS`` characters."""
    batch: list[str] = []
    chars = 0
    for document in documents:
        batch.append(document)
        chars += len(document)
        if len(batch) >= size or chars >= _MAX_BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch
