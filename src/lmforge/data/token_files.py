"""Token-level data for NER: CoNLL and JSONL readers, writers, and tag-scheme checks.

Two formats, recognized by content rather than by extension (WNUT-17's test file is
called ``emerging.test.annotated``):

- **CoNLL**: one ``token<TAB or space>...<TAB or space>tag`` per line (the tag is the last
  column), a blank line between sentences, ``-DOCSTART-`` lines ignored;
- **JSONL**: one ``{"tokens": [...], "tags": [...]}`` object per line.

Tags follow BIO (IOB2) or BIOES. :func:`check_scheme` finds invalid transitions (an
``I-x`` that does not continue an ``x`` entity) and either repairs them the way seqeval
reads them (the ``I-`` starts a new entity: it becomes ``B-``) or rejects the file, and
says how many it changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lmforge.data.cleaning import CleaningReport
from lmforge.data.readers import decode_file
from lmforge.errors import LmforgeError

SCHEMES = ("bio", "bioes")


@dataclass(frozen=True)
class TokenExample:
    tokens: list[str]
    tags: list[str]


def read_token_file(path: str | Path, encoding: str = "utf-8") -> list[TokenExample]:
    """Sentences of a CoNLL or JSONL token file (the format is read from the content)."""
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"token file {path} not found; give a CoNLL or JSONL file")
    text = decode_file(path, encoding)
    if not text.strip():
        raise LmforgeError(f"{path} is empty; it needs at least one sentence")
    examples = _read_jsonl(path, text) if text.lstrip().startswith("{") else _read_conll(path, text)
    if not examples:
        raise LmforgeError(f"{path} has no sentences (only -DOCSTART- lines or blanks)")
    return examples


def _read_conll(path: Path, text: str) -> list[TokenExample]:
    examples: list[TokenExample] = []
    tokens: list[str] = []
    tags: list[str] = []

    def close() -> None:
        if tokens:
            examples.append(TokenExample(list(tokens), list(tags)))
        tokens.clear()
        tags.clear()

    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            close()
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if fields[0] == "-DOCSTART-":
            close()
            continue
        if len(fields) < 2 or not fields[-1].strip():
            raise LmforgeError(
                f"{path}: line {number} has no tag ({line[:60]!r}); CoNLL needs 'token<TAB>tag' "
                "lines with a blank line between sentences"
            )
        tokens.append(fields[0])
        tags.append(fields[-1].strip())
    close()
    return examples


def _read_jsonl(path: Path, text: str) -> list[TokenExample]:
    examples = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise LmforgeError(
                f"{path}: line {number} is not valid JSON ({err.msg}); token JSONL needs one "
                '{"tokens": [...], "tags": [...]} object per line'
            ) from None
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("tokens"), list)
            or not isinstance(record.get("tags"), list)
        ):
            raise LmforgeError(f'{path}: line {number} needs "tokens" and "tags" lists')
        tokens, tags = [str(t) for t in record["tokens"]], [str(t) for t in record["tags"]]
        if len(tokens) != len(tags):
            raise LmforgeError(
                f"{path}: line {number} has {len(tokens)} tokens but {len(tags)} tags; "
                "each token needs exactly one tag"
            )
        if tokens:
            examples.append(TokenExample(tokens, tags))
    return examples


def write_conll(examples: Iterable[TokenExample], path: str | Path) -> None:
    Path(path).write_text(
        "\n".join(
            "\n".join(f"{t}\t{g}" for t, g in zip(e.tokens, e.tags, strict=True)) + "\n"
            for e in examples
        ),
        encoding="utf-8",
    )


def write_jsonl(examples: Iterable[TokenExample], path: str | Path) -> None:
    Path(path).write_text(
        "".join(
            json.dumps({"tokens": e.tokens, "tags": e.tags}, ensure_ascii=False) + "\n"
            for e in examples
        ),
        encoding="utf-8",
    )


def _split(tag: str) -> tuple[str, str]:
    """('B', 'person') for 'B-person'; ('O', '') for 'O'."""
    if tag == "O":
        return "O", ""
    prefix, sep, kind = tag.partition("-")
    if not sep or prefix not in ("B", "I", "E", "S") or not kind:
        raise LmforgeError(f"tag {tag!r} is not O, B-x, I-x, E-x or S-x")
    return prefix, kind


def check_scheme(
    examples: Sequence[TokenExample], scheme: str = "bio", repair: bool = True, source: str = "data"
) -> tuple[list[TokenExample], int]:
    """Validate tag transitions; return (examples, number of tags repaired).

    BIO: an ``I-x`` after ``O`` or after another type starts an entity, so it is
    repaired to ``B-x`` (or rejected with ``repair=False``). BIOES additionally allows
    ``E-``/``S-``; a ``B-``/``I-`` entity must end in ``E-`` and single tokens are ``S-``.
    """
    if scheme not in SCHEMES:
        raise LmforgeError(f"unknown tag scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    repaired, out = 0, []
    for number, example in enumerate(examples, start=1):
        tags, previous = [], ("O", "")
        for tag in example.tags:
            prefix, kind = _split(tag)
            if scheme == "bio" and prefix in ("E", "S"):
                raise LmforgeError(
                    f"{source}: sentence {number} has {tag!r}, a BIOES tag; "
                    "set the tag scheme to bioes"
                )
            continues = previous[1] == kind and previous[0] in ("B", "I")
            if prefix in ("I", "E") and not continues:
                if not repair:
                    raise LmforgeError(
                        f"{source}: sentence {number} has {tag!r} without a preceding entity of "
                        f"type {kind}; fix the data or allow repairs"
                    )
                tag, prefix = (f"B-{kind}", "B") if prefix == "I" else (f"S-{kind}", "S")
                repaired += 1
            tags.append(tag)
            previous = (prefix, kind)
        out.append(TokenExample(example.tokens, tags))
    return out, repaired


def load_token_frame(
    path: str | Path, scheme: str = "bio", repair: bool = True, encoding: str = "utf-8"
) -> tuple[pd.DataFrame, CleaningReport]:
    """A token file as a frame (``tokens``, ``label`` = the tags, ``text`` = the words joined by
    spaces) with its tags checked against ``scheme``; the report counts sentences and repairs.

    Sentences are kept as given (no de-duplication: a short sentence such as "Thanks !" may
    rightly occur many times in a corpus).
    """
    examples, repaired = check_scheme(
        read_token_file(path, encoding), scheme, repair, source=str(path)
    )
    report = CleaningReport(
        rows_read=len(examples), rows_kept=len(examples), repaired_tags=repaired
    )
    frame = pd.DataFrame(
        {
            "text": [" ".join(e.tokens) for e in examples],
            "tokens": [e.tokens for e in examples],
            "label": [e.tags for e in examples],
        }
    )
    return frame, report
